// The service's HTTP API (docs/review_api.md): log-in, worklist, review, verdicts, with the bearer token kept in
// sessionStorage (it dies with the tab; nothing about patients is stored in the browser).

export interface Session { token: string; user: string; role: string; expires_at: string }

export interface Finding {
  finding_id: string; model: string; model_version: string; label: string; probability: number | null;
  operating_point: OperatingPoint | number | null; positive: boolean | null; defer: boolean | null;
  bundle_checksum?: string; model_card_url?: string; label_names?: string[]; task?: string;
  source_series_uid?: string | null; source_sop_uids?: string[];
  overlay?: Overlay; verdicts?: Record<string, unknown>[];
}

export interface OperatingPoint { threshold: number; method?: string; on?: string }

/** A box in DICOM 2D image coordinates of image ``sop_uid``; ``frame`` (1-based) is the frame of a multi-frame image it
 * lies on. Without one it lies on every frame of its image (the review API refuses that in an edit on a multi-frame
 * image, docs/review_api.md), which is the only meaning it can have on a single-frame image. */
export interface Box {
  sop_uid: string; x0: number; y0: number; x1: number; y1: number; label?: string; score?: number | null;
  frame?: number | null;
}

export interface Overlay {
  kind: 'seg' | 'heatmap' | 'boxes' | 'none'; series_uid?: string | null; sop_uid?: string | null;
  segment_number?: number | null; boxes?: Box[] | null;
}

export interface WorklistStudy {
  study_uid: string; patient_name?: string | null; patient_id?: string | null; modalities: string[];
  study_date?: string | null; received_at?: string | null; ai_status: string; findings: Finding[];
  priority: number; priority_reason?: string | null; reviewed: boolean;
}

export interface SeriesInfo {
  series_uid: string; modality: string | null; description: string | null; n_instances: number;
  is_result: boolean; sop_class_uid: string | null;
}

export interface Review { study_uid: string; series: SeriesInfo[]; findings: Finding[] }

export interface VerdictAnswer {
  verdict_id: string | number; reader_sr_sop_uid: string; reader_seg_sop_uid: string | null; export_jobs: unknown[];
}

const KEY = 'medsight.session';

export function session(): Session | null {
  const raw = sessionStorage.getItem(KEY);
  if (!raw) return null;
  const s = JSON.parse(raw) as Session;
  if (s.expires_at && Date.parse(s.expires_at) < Date.now()) { sessionStorage.removeItem(KEY); return null; }
  return s;
}

export function logout(): void { sessionStorage.removeItem(KEY); }

export function canJudge(s: Session | null): boolean { return !!s && (s.role === 'radiologist' || s.role === 'admin'); }

export class ApiError extends Error {
  constructor(public status: number, message: string) { super(message); }
}

export function authHeader(): Record<string, string> {
  const s = session();
  return s ? { Authorization: `Bearer ${s.token}` } : {};
}

async function call<T>(method: string, path: string, body?: unknown, accept = 'application/json'): Promise<T> {
  const headers: Record<string, string> = { Accept: accept, ...authHeader() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 && !path.endsWith('/api/login')) {
    logout();
    location.hash = '#/login';
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { const j = await response.json(); detail = typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail); }
    catch { /* not JSON */ }
    throw new ApiError(response.status, `${response.status}: ${detail}`);
  }
  const type = response.headers.get('content-type') || '';
  return (type.includes('json') ? response.json() : response.text()) as Promise<T>;
}

/** The service root: the page lives at <root>/workstation/. */
export function root(): string {
  const at = location.pathname.indexOf('/workstation');
  return location.origin + (at >= 0 ? location.pathname.slice(0, at) : '');
}

export async function login(user: string, password: string): Promise<Session> {
  const s = await call<Session>('POST', `${root()}/api/login`, { user, password });
  sessionStorage.setItem(KEY, JSON.stringify(s));
  return s;
}

export function worklist(filters: Record<string, string>): Promise<{ studies: WorklistStudy[] }> {
  const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v !== ''));
  const query = q.toString();
  return call('GET', `${root()}/api/worklist${query ? `?${query}` : ''}`);
}

export function review(study: string): Promise<Review> {
  return call('GET', `${root()}/api/studies/${encodeURIComponent(study)}/review`);
}

export function submitVerdict(study: string, verdict: Record<string, unknown>): Promise<VerdictAnswer> {
  return call('POST', `${root()}/api/studies/${encodeURIComponent(study)}/verdicts`, verdict);
}

export function modelCard(url: string): Promise<string> {
  return call<string>('GET', url.startsWith('http') ? url : `${root()}${url}`, undefined, 'text/html');
}

/** The readers' agreement with a model (counts, sensitivity and specificity with CIs, plots over time). */
export function agreementPage(model: string): Promise<string> {
  return call<string>('GET', `${root()}/review/agreement/${encodeURIComponent(model)}`, undefined, 'text/html');
}

export const dicomweb = (): string => `${root()}/dicomweb`;

/** DICOM JSON (PS3.18 F.2) of a series or one instance, without bulk data. */
export function metadata(path: string): Promise<Record<string, any>[]> {
  return call('GET', `${dicomweb()}${path}/metadata`, undefined, 'application/dicom+json');
}

/** Raw frames (1-based) as Explicit VR Little Endian bytes, parsed out of the multipart/related answer. */
export async function frames(path: string, numbers: number[]): Promise<Uint8Array[]> {
  const response = await fetch(`${dicomweb()}${path}/frames/${numbers.join(',')}`, {
    headers: { Accept: 'multipart/related; type="application/octet-stream"', ...authHeader() },
  });
  if (!response.ok) throw new ApiError(response.status, `frames: ${response.status}`);
  const type = response.headers.get('content-type') || '';
  const boundary = /boundary=("?)([^";]+)\1/.exec(type)?.[2];
  if (!boundary) throw new Error('frames: multipart answer without a boundary');
  return splitMultipart(new Uint8Array(await response.arrayBuffer()), boundary);
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from: number): number {
  outer: for (let i = from; i <= hay.length - needle.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

export function splitMultipart(body: Uint8Array, boundary: string): Uint8Array[] {
  const enc = new TextEncoder();
  const delimiter = enc.encode(`--${boundary}`);
  const blank = enc.encode('\r\n\r\n');
  const parts: Uint8Array[] = [];
  let at = indexOf(body, delimiter, 0);
  while (at >= 0) {
    const afterDelimiter = at + delimiter.length;
    if (body[afterDelimiter] === 45 && body[afterDelimiter + 1] === 45) break; // "--": the close delimiter
    const headersEnd = indexOf(body, blank, afterDelimiter);
    if (headersEnd < 0) break;
    const start = headersEnd + blank.length;
    const next = indexOf(body, delimiter, start);
    if (next < 0) break;
    parts.push(body.subarray(start, next - 2)); // the part ends with CRLF before the delimiter
    at = next;
  }
  return parts;
}

/** A rendered (PNG) instance as an image bitmap, through the bearer token. */
export async function rendered(path: string): Promise<ImageBitmap> {
  const response = await fetch(`${dicomweb()}${path}/rendered`, { headers: { Accept: 'image/png', ...authHeader() } });
  if (!response.ok) throw new ApiError(response.status, `rendered: ${response.status}`);
  return createImageBitmap(await response.blob());
}
