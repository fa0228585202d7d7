// The viewer: a Cornerstone3D stack viewport fed by the service's WADO-RS (metadata + raw frames, bearer token),
// with stack scroll, zoom, pan, window/level and presets, the AI's overlays per finding, and the verdicts.
import {
  Enums, RenderingEngine, getRenderingEngine, init as csInit, setUseCPURendering, type Types,
} from '@cornerstonejs/core';
import { init as dicomLoaderInit, wadors } from '@cornerstonejs/dicom-image-loader';
import {
  PanTool, StackScrollTool, ToolGroupManager, WindowLevelTool, ZoomTool, addTool, init as toolsInit,
  Enums as ToolEnums,
} from '@cornerstonejs/tools';
import {
  agreementPage, authHeader, canJudge, dicomweb, frames, metadata, modelCard, rendered, review, session, submitVerdict,
  type Finding, type Review, type SeriesInfo,
} from './api';
import {
  OverlayLayer, boxForApi, maskPng, unpackFrame, type Mapper, type MaskSet, type Shown, type Vec2,
} from './overlays';
import { openReport } from './report';
import { esc } from './worklist';

type Json = Record<string, any>;
const RENDERING_ENGINE = 'medsight-engine';
const VIEWPORT = 'medsight-stack';
const TOOL_GROUP = 'medsight-tools';
const SEG_CLASS = '1.2.840.10008.5.1.4.1.1.66.4';
/** Window presets as [center, width] in Hounsfield units. */
export const PRESETS: Record<string, [number, number]> = {
  lung: [-600, 1500], 'soft tissue': [40, 400], bone: [400, 1800], brain: [40, 80],
};

const v = (inst: Json, tag: string): any => inst?.[tag]?.Value?.[0];
const vs = (inst: Json, tag: string): any[] => inst?.[tag]?.Value ?? [];

let ready: Promise<void> | null = null;

function hasWebGL2(): boolean {
  try { return !!document.createElement('canvas').getContext('webgl2'); } catch { return false; }
}

function initCornerstone(): Promise<void> {
  ready ??= (async () => {
    if (new URLSearchParams(location.search).has('cpu') || !hasWebGL2()) setUseCPURendering(true);
    csInit();
    dicomLoaderInit({ maxWebWorkers: 2, beforeSend: () => authHeader() });
    toolsInit();
    for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) addTool(tool);
  })();
  return ready;
}

/** Instances in display order: along the slice normal when positions exist, else by Instance Number. */
function order(instances: Json[]): Json[] {
  const first = instances[0];
  const orient = vs(first, '00200037').map(Number);
  const withPos = instances.every((i) => vs(i, '00200032').length === 3) && orient.length === 6;
  if (withPos) {
    const [a, b, c, d, e, f] = orient;
    const n = [b * f - c * e, c * d - a * f, a * e - b * d];
    const along = (i: Json): number => vs(i, '00200032').map(Number).reduce((s, x, k) => s + x * n[k], 0);
    return [...instances].sort((p, q) => along(p) - along(q));
  }
  return [...instances].sort((p, q) => Number(v(p, '00200013') ?? 0) - Number(v(q, '00200013') ?? 0));
}

/** ``0.520 (youden) on pneumonia`` from the finding's operating point (a number or the service's object). */
function operatingPoint(op: Finding['operating_point']): string {
  if (op == null) return '–';
  if (typeof op === 'number') return op.toFixed(3);
  return `${Number(op.threshold).toFixed(3)}${op.method ? ` (${op.method})` : ''}${op.on ? ` on ${op.on}` : ''}`;
}

/** The stack: image ids in display order (``.../instances/<sop>/frames/<n>``, one per frame), the SOP instance and
 * frame (1-based) of each, where each instance starts, and each instance's NumberOfFrames. */
export interface ViewerState {
  imageIds: string[]; sopOf: Map<string, string>; frameOf: Map<string, number>; indexOfSop: Map<string, number>;
  framesOf: Map<string, number>;
}

export async function showViewer(app: HTMLElement, studyUid: string): Promise<() => void> {
  const opened = performance.now();
  const me = session();
  const judge = canJudge(me);
  app.innerHTML = `
    <div class="viewer">
      <section class="stage">
        <div class="toolbar">
          <a href="#/worklist">← Worklist</a>
          <select id="series"></select>
          ${Object.keys(PRESETS).map((p) => `<button data-preset="${p}">${p}</button>`).join('')}
          <button id="zoom-in" title="+">Zoom +</button><button id="zoom-out" title="-">Zoom −</button>
          <button id="reset" title="r">Reset</button>
          <label>Overlay <select id="overlay-style"><option value="fill">fill</option>
            <option value="outline">outline</option></select></label>
          <label>Opacity <input id="overlay-opacity" type="range" min="0" max="1" step="0.05" value="0.4"></label>
        </div>
        <div class="viewport-wrap" id="viewport-wrap">
          <div id="viewport" oncontextmenu="return false"></div>
          <canvas id="overlay"></canvas>
          <div class="corner" id="corner"></div>
        </div>
      </section>
      <aside class="findings" id="findings"><div class="muted">Loading…</div></aside>
    </div>`;
  const element = app.querySelector('#viewport') as HTMLDivElement;
  const wrap = app.querySelector('#viewport-wrap') as HTMLElement;
  const corner = app.querySelector('#corner') as HTMLElement;
  const panel = app.querySelector('#findings') as HTMLElement;
  const canvas = app.querySelector('#overlay') as HTMLCanvasElement;

  await initCornerstone();
  getRenderingEngine(RENDERING_ENGINE)?.destroy();
  ToolGroupManager.destroyToolGroup(TOOL_GROUP);
  const engine = new RenderingEngine(RENDERING_ENGINE);
  engine.enableElement({ viewportId: VIEWPORT, type: Enums.ViewportType.STACK, element });
  const viewport = engine.getViewport(VIEWPORT) as Types.IStackViewport;
  const group = ToolGroupManager.createToolGroup(TOOL_GROUP)!;
  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) group.addTool(tool.toolName);
  group.addViewport(VIEWPORT, RENDERING_ENGINE);
  const B = ToolEnums.MouseBindings;
  group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: B.Primary }] });
  group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: B.Auxiliary }] });
  group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: B.Secondary }] });
  group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: B.Wheel }] });

  const state: ViewerState = {
    imageIds: [], sopOf: new Map(), frameOf: new Map(), indexOfSop: new Map(), framesOf: new Map(),
  };
  let firstImageMs: number | null = null;
  const currentSop = (): string | null => state.sopOf.get(viewport.getCurrentImageId() ?? '') ?? null;
  /** The image shown: its instance, the frame of it and how many frames the instance has. */
  const shown = (): Shown | null => {
    const id = viewport.getCurrentImageId() ?? '';
    const sop = state.sopOf.get(id);
    return sop ? { sop, frame: state.frameOf.get(id) ?? 1, frames: state.framesOf.get(sop) ?? 1 } : null;
  };
  const mapper = (): Mapper | null => {
    const data = viewport.getImageData?.() as any;
    if (!data || !viewport.getCurrentImageId()) return null;
    const { origin, direction, spacing } = data as { origin: number[]; direction: number[]; spacing: number[] };
    const row = direction.slice(0, 3), col = direction.slice(3, 6);
    return {
      toCanvas(x: number, y: number): Vec2 {
        const w = [0, 1, 2].map((k) => origin[k] + row[k] * spacing[0] * (x - 0.5) + col[k] * spacing[1] * (y - 0.5));
        const c = viewport.worldToCanvas(w as Types.Point3);
        return [c[0], c[1]];
      },
      toImage(cx: number, cy: number): Vec2 {
        const w = viewport.canvasToWorld([cx, cy] as Types.Point2);
        const d = [0, 1, 2].map((k) => w[k] - origin[k]);
        const dot = (a: number[]): number => a[0] * d[0] + a[1] * d[1] + a[2] * d[2];
        return [dot(row) / spacing[0] + 0.5, dot(col) / spacing[1] + 0.5];
      },
    };
  };
  const size = (): Vec2 | null => {
    const dims = (viewport.getImageData?.() as any)?.dimensions;
    return dims ? [dims[0], dims[1]] : null;
  };
  const layer = new OverlayLayer(canvas, mapper, shown, size, wrap);

  const status = (): void => {
    const props = viewport.getProperties();
    const range = props.voiRange;
    const wl = range ? `W ${Math.round(range.upper - range.lower)} L ${Math.round((range.upper + range.lower) / 2)}` : '';
    const index = viewport.getCurrentImageIdIndex();
    const at = shown();
    const frame = at && at.frames > 1 ? `  frame ${at.frame}/${at.frames}` : '';
    corner.textContent = `${index + 1}/${state.imageIds.length}${frame}  ${wl}  zoom ${viewport.getZoom().toFixed(2)}`;
    wrap.dataset.index = String(index);
    wrap.dataset.frame = String(at?.frame ?? '');
    wrap.dataset.count = String(state.imageIds.length);
    wrap.dataset.wl = wl;
    wrap.dataset.zoom = viewport.getZoom().toFixed(3);
  };
  const onRendered = (): void => {
    if (firstImageMs === null && state.imageIds.length) {
      firstImageMs = performance.now() - opened;
      wrap.dataset.firstImageMs = firstImageMs.toFixed(1);
    }
    layer.draw();
    status();
  };
  element.addEventListener(Enums.Events.IMAGE_RENDERED, onRendered);
  const resize = new ResizeObserver(() => { engine.resize(true, false); layer.draw(); });
  resize.observe(wrap);

  const go = (index: number): void => {
    const n = state.imageIds.length;
    if (n) void viewport.setImageIdIndex(Math.max(0, Math.min(n - 1, index)));
  };
  const zoomBy = (f: number): void => { viewport.setZoom(viewport.getZoom() * f); viewport.render(); };
  const setPreset = (name: string): void => {
    const [c, w] = PRESETS[name];
    viewport.setProperties({ voiRange: { lower: c - w / 2, upper: c + w / 2 } });
    viewport.render();
  };
  const onKey = (e: KeyboardEvent): void => {
    if ((e.target as HTMLElement).closest('input, textarea, select')) return;
    const i = viewport.getCurrentImageIdIndex();
    const keys: Record<string, () => void> = {
      ArrowDown: () => go(i + 1), ArrowRight: () => go(i + 1), PageDown: () => go(i + 10),
      ArrowUp: () => go(i - 1), ArrowLeft: () => go(i - 1), PageUp: () => go(i - 10),
      Home: () => go(0), End: () => go(state.imageIds.length - 1),
      '+': () => zoomBy(1.25), '=': () => zoomBy(1.25), '-': () => zoomBy(0.8),
      r: () => { viewport.resetCamera(); viewport.resetProperties(); viewport.render(); },
      Delete: () => { if (layer.editing) layer.deleteSelectedBox(layer.editing.finding); },
    };
    const act = keys[e.key];
    if (act) { act(); e.preventDefault(); }
  };
  document.addEventListener('keydown', onKey);
  app.querySelectorAll<HTMLButtonElement>('[data-preset]').forEach((b) =>
    b.addEventListener('click', () => setPreset(b.dataset.preset!)));
  app.querySelector('#zoom-in')?.addEventListener('click', () => zoomBy(1.25));
  app.querySelector('#zoom-out')?.addEventListener('click', () => zoomBy(0.8));
  app.querySelector('#reset')?.addEventListener('click', () => {
    viewport.resetCamera(); viewport.resetProperties(); viewport.render();
  });
  (app.querySelector('#overlay-style') as HTMLSelectElement).addEventListener('change', (e) => {
    layer.style = (e.target as HTMLSelectElement).value as 'fill' | 'outline'; layer.draw();
  });
  (app.querySelector('#overlay-opacity') as HTMLInputElement).addEventListener('input', (e) => {
    layer.opacity = Number((e.target as HTMLInputElement).value); layer.draw();
  });

  const loadSeries = async (series: string): Promise<void> => {
    const path = `/studies/${studyUid}/series/${series}`;
    const instances = order(await metadata(path));
    state.imageIds = []; state.sopOf.clear(); state.frameOf.clear(); state.indexOfSop.clear(); state.framesOf.clear();
    for (const inst of instances) {
      const sop = v(inst, '00080018');
      const n = Number(v(inst, '00280008') ?? 1) || 1;
      state.indexOfSop.set(sop, state.imageIds.length);
      state.framesOf.set(sop, n);
      for (let f = 1; f <= n; f++) {
        const imageId = `wadors:${dicomweb()}${path}/instances/${sop}/frames/${f}`;
        wadors.metaDataManager.add(imageId, inst as any);
        state.imageIds.push(imageId);
        state.sopOf.set(imageId, sop);
        state.frameOf.set(imageId, f);
      }
    }
    await viewport.setStack(state.imageIds, Math.floor(state.imageIds.length / 2));
    viewport.render();
  };

  let data: Review;
  try {
    data = await review(studyUid);
  } catch (exc) {
    panel.innerHTML = `<div class="error">${esc(exc)}</div>`;
    return () => cleanup();
  }
  const images = data.series.filter((s) => !s.is_result && s.sop_class_uid !== SEG_CLASS);
  const select = app.querySelector('#series') as HTMLSelectElement;
  select.innerHTML = images.map((s: SeriesInfo) =>
    `<option value="${esc(s.series_uid)}">${esc(s.modality)} ${esc(s.description ?? '')} (${s.n_instances})</option>`,
  ).join('');
  // the series the first SEG refers to, else the first image series
  const sourced = data.findings.map((f) => f.source_series_uid).find((s) => images.some((i) => i.series_uid === s));
  let initial = sourced ?? images[0]?.series_uid;
  const segInfo = new Map<string, Json>();
  for (const f of data.findings) {
    const o = f.overlay;
    if (o?.kind === 'seg' && o.series_uid && o.sop_uid) {
      const [meta] = await metadata(`/studies/${studyUid}/series/${o.series_uid}/instances/${o.sop_uid}`);
      segInfo.set(f.finding_id, meta);
      const ref = v(v(meta, '00081115'), '0020000E');
      if (ref && images.some((s) => s.series_uid === ref) && !sourced) initial = ref;
    }
  }
  if (initial) {
    select.value = initial;
    await loadSeries(initial);
  }
  select.addEventListener('change', () => void loadSeries(select.value));

  // ---- overlays ----
  const loadOverlay = async (f: Finding): Promise<void> => {
    const o = f.overlay;
    if (!o || o.kind === 'none' || layer.overlays.has(f.finding_id)) return;
    if (o.kind === 'boxes') {
      layer.add(f.finding_id, { kind: 'boxes', boxes: (o.boxes ?? []).map((b) => ({ ...b })) });
    } else if (o.kind === 'heatmap' && o.series_uid && o.sop_uid) {
      const path = `/studies/${studyUid}/series/${o.series_uid}/instances/${o.sop_uid}`;
      const [meta] = await metadata(path);
      const source = v(v(meta, '00082112'), '00081155') ?? (f.source_sop_uids?.length === 1 ? f.source_sop_uids[0] : null);
      layer.add(f.finding_id, { kind: 'heatmap', heatmap: { bitmap: await rendered(path), sop: source ?? null } });
    } else if (o.kind === 'seg' && o.series_uid && o.sop_uid) {
      const meta = segInfo.get(f.finding_id)!;
      const rows = Number(v(meta, '00280010')), cols = Number(v(meta, '00280011'));
      const bits = Number(v(meta, '00280100'));
      const perFrame = vs(meta, '52009230');
      const n = Number(v(meta, '00280008') ?? 1) || 1;
      const path = `/studies/${studyUid}/series/${o.series_uid}/instances/${o.sop_uid}`;
      const raw = await frames(path, Array.from({ length: n }, (_, i) => i + 1));
      const mask: MaskSet = { rows, cols, bySop: new Map(), edited: new Set() };
      raw.forEach((bytes, i) => {
        const item = perFrame[i] ?? {};
        const segment = Number(v(v(item, '0062000A'), '0062000B') ?? 1);
        if (o.segment_number != null && segment !== o.segment_number) return;
        const source = v(v(v(item, '00089124'), '00082112'), '00081155');
        if (!source) return;
        const frame = unpackFrame(bytes, rows, cols, bits);
        const have = mask.bySop.get(source);
        if (have) frame.forEach((x, k) => { if (x) have[k] = 1; }); else mask.bySop.set(source, frame);
      });
      layer.add(f.finding_id, { kind: 'seg', mask });
    }
  };
  /** The first image (in display order) the finding's overlay marks. */
  const firstMarked = (f: Finding): number | null => {
    const ov = layer.overlays.get(f.finding_id);
    const marks: [string, number][] = ov?.mask
      ? [...ov.mask.bySop.entries()].filter(([, m]) => m.some((x) => x)).map(([s]) => [s, 1])
      : ov?.boxes ? ov.boxes.map((b) => [b.sop_uid, b.frame ?? 1])
        : ov?.heatmap?.sop ? [[ov.heatmap.sop, 1]] : [];
    const idx = marks.map(([s, frame]) => {
      const start = state.indexOfSop.get(s);
      return start === undefined ? undefined : start + Math.min(frame, state.framesOf.get(s) ?? 1) - 1;
    }).filter((i): i is number => i !== undefined);
    return idx.length ? Math.min(...idx) : null;
  };

  // ---- findings panel and verdicts ----
  const openedAt = new Map<string, number>();
  const card = (f: Finding): string => {
    const prob = f.probability == null ? '–' : f.probability.toFixed(3);
    const op = operatingPoint(f.operating_point);
    const call = f.positive == null ? '–' : f.positive ? 'positive' : 'negative';
    const has = f.overlay && f.overlay.kind !== 'none';
    return `
      <div class="finding" data-finding="${esc(f.finding_id)}">
        <h3>${esc(f.label)} <span class="pill ${f.defer ? 'defer' : f.positive ? 'positive' : 'negative'}">${call}</span>
          ${f.defer ? '<span class="pill defer">defer to radiologist</span>' : ''}</h3>
        <dl><dt>Probability</dt><dd class="probability">${prob} <span class="muted">(calibrated)</span></dd>
          <dt>Operating point</dt><dd>${op}</dd>
          <dt>Model</dt><dd>${esc(f.model)} ${esc(f.model_version)}</dd>
          ${f.bundle_checksum ? `<dt>Bundle</dt><dd title="${esc(f.bundle_checksum)}">${esc(f.bundle_checksum.slice(0, 12))}</dd>` : ''}
          <dt>Verdicts</dt><dd class="n-verdicts">${(f.verdicts ?? []).length}</dd></dl>
        ${f.model_card_url ? `<a href="#" class="model-card">Model card</a>` : ''}
        <a href="#" class="agreement" title="how often readers agree with this model">Agreement</a>
        ${has ? `<label><input type="checkbox" class="show-overlay"> show ${esc(f.overlay!.kind)} overlay</label>` : ''}
        <div class="actions">
          <button class="agree" ${judge ? '' : 'disabled'}>Agree</button>
          <button class="disagree" ${judge ? '' : 'disabled'}>Disagree</button>
          <button class="edit" ${judge ? '' : 'disabled'}>Edit</button>
        </div>
        <div class="editbar" hidden>
          ${f.overlay?.kind === 'seg' ? `<button class="tool" data-tool="paint">Paint</button>
            <button class="tool" data-tool="erase">Erase</button>
            <label>Brush <input class="radius" type="number" min="1" max="50" value="4" size="3"></label>` : ''}
          ${f.overlay?.kind === 'boxes' ? `<button class="tool" data-tool="box-move">Move</button>
            <button class="tool" data-tool="box-add">Add box</button><button class="box-delete">Delete box</button>` : ''}
          <label>Label ${f.label_names?.length
            ? `<select class="label">${f.label_names.map((n) =>
              `<option ${n === f.label ? 'selected' : ''}>${esc(n)}</option>`).join('')}</select>`
            : `<input class="label" value="${esc(f.label)}">`}</label>
          <button class="submit-edit">Submit edit</button>
        </div>
        <textarea class="comment" rows="2" placeholder="Comment (optional)" ${judge ? '' : 'disabled'}></textarea>
        ${judge ? '' : '<div class="muted">Your role (viewer) cannot submit verdicts.</div>'}
        <div class="status" role="status"></div>
      </div>`;
  };
  panel.innerHTML = data.findings.length ? data.findings.map(card).join('')
    : '<div class="muted">No AI findings for this study.</div>';

  const openFinding = async (f: Finding, el: HTMLElement): Promise<void> => {
    if (!openedAt.has(f.finding_id)) openedAt.set(f.finding_id, performance.now());
    panel.querySelectorAll('.finding').forEach((x) => x.classList.toggle('open', x === el));
  };

  for (const f of data.findings) {
    const el = panel.querySelector(`[data-finding="${CSS.escape(f.finding_id)}"]`) as HTMLElement;
    const say = (text: string, bad = false): void => {
      const s = el.querySelector('.status') as HTMLElement;
      s.textContent = text; s.classList.toggle('error', bad);
    };
    el.addEventListener('click', () => void openFinding(f, el), true);
    el.querySelector('.model-card')?.addEventListener('click', async (e) => {
      e.preventDefault();
      openReport(await modelCard(f.model_card_url!));
    });
    el.querySelector('.agreement')?.addEventListener('click', async (e) => {
      e.preventDefault();
      openReport(await agreementPage(f.model));
    });
    const box = el.querySelector('.show-overlay') as HTMLInputElement | null;
    box?.addEventListener('change', async () => {
      try {
        await loadOverlay(f);
        const on = layer.toggle(f.finding_id, box.checked);
        const at = on ? firstMarked(f) : null;
        if (at !== null && state.sopOf.get(viewport.getCurrentImageId()) !== undefined) {
          const ov = layer.overlays.get(f.finding_id);
          const here = ov?.mask?.bySop.get(currentSop() ?? '')?.some((x) => x);
          if (!here) go(at);
        }
      } catch (exc) { say(`overlay: ${exc}`, true); box.checked = false; }
    });
    const send = async (decision: string, edit: Json | null): Promise<void> => {
      const started = openedAt.get(f.finding_id) ?? opened;
      const body = {
        finding_id: f.finding_id, decision, edit,
        comment: (el.querySelector('.comment') as HTMLTextAreaElement).value,
        seconds_spent: Math.round((performance.now() - started) / 100) / 10,
      };
      el.querySelectorAll<HTMLButtonElement>('.actions button, .submit-edit').forEach((b) => { b.disabled = true; });
      say('Saving…');
      try {
        const answer = await submitVerdict(studyUid, body);
        el.dataset.verdict = decision;
        el.dataset.readerSr = answer.reader_sr_sop_uid;
        const n = el.querySelector('.n-verdicts') as HTMLElement;
        n.textContent = String(Number(n.textContent) + 1);
        say(`Saved: ${decision}. Reader SR ${answer.reader_sr_sop_uid}` +
          (answer.reader_seg_sop_uid ? `, reader SEG ${answer.reader_seg_sop_uid}` : '') + '; sent to PACS.');
        layer.setEditing(null);
        (el.querySelector('.editbar') as HTMLElement).hidden = true;
      } catch (exc) {
        say(String(exc), true);
      } finally {
        el.querySelectorAll<HTMLButtonElement>('.actions button, .submit-edit').forEach((b) => { b.disabled = !judge; });
      }
    };
    el.querySelector('.agree')?.addEventListener('click', () => void send('agree', null));
    el.querySelector('.disagree')?.addEventListener('click', () => void send('disagree', null));
    el.querySelector('.edit')?.addEventListener('click', async () => {
      const bar = el.querySelector('.editbar') as HTMLElement;
      bar.hidden = !bar.hidden;
      el.querySelectorAll('.tool').forEach((x) => x.classList.remove('on'));
      if (bar.hidden) { layer.setEditing(null); return; }
      layer.setEditing(f.finding_id, 'none');
      if (f.overlay && f.overlay.kind !== 'none') {
        await loadOverlay(f);
        if (box) box.checked = true;
        layer.toggle(f.finding_id, true);
      }
    });
    el.querySelectorAll<HTMLButtonElement>('.tool').forEach((b) => b.addEventListener('click', () => {
      const on = !b.classList.contains('on');
      el.querySelectorAll('.tool').forEach((x) => x.classList.remove('on'));
      b.classList.toggle('on', on);
      const radius = Number((el.querySelector('.radius') as HTMLInputElement | null)?.value ?? 4);
      layer.setEditing(f.finding_id, on ? b.dataset.tool as any : 'none', radius);
      // the left button edits while a tool is on; window/level comes back when it is off
      if (on) group.setToolPassive(WindowLevelTool.toolName);
      else group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: B.Primary }] });
    }));
    el.querySelector('.radius')?.addEventListener('change', (e) => {
      if (layer.editing) layer.editing.radius = Number((e.target as HTMLInputElement).value);
    });
    el.querySelector('.box-delete')?.addEventListener('click', () => layer.deleteSelectedBox(f.finding_id));
    el.querySelector('.submit-edit')?.addEventListener('click', () => {
      const ov = layer.overlays.get(f.finding_id);
      const label = (el.querySelector('.label') as HTMLInputElement | HTMLSelectElement).value.trim();
      let edit: Json | null = null;
      if (ov?.mask && ov.mask.edited.size) {
        const m = ov.mask;
        const sops = [...m.bySop.keys()].filter((s) => m.edited.has(s) || m.bySop.get(s)!.some((x) => x));
        edit = { mask: Object.fromEntries(sops.map((s) => [s, maskPng(m.bySop.get(s)!, m.cols, m.rows)])) };
      } else if (ov?.boxes && ov.boxesEdited) {
        // a box on a multi-frame image needs its frame (the API refuses one that would lie on every frame)
        const loose = ov.boxes.filter((b) => b.frame == null && (state.framesOf.get(b.sop_uid) ?? 1) > 1).length;
        if (loose) {
          say(`${loose} box(es) (dashed) lie on every frame of a multi-frame image: move each onto its frame, or ` +
            'delete it, first.', true);
          return;
        }
        edit = { boxes: ov.boxes.map((b) => boxForApi(b, label)) };
      } else if (label && label !== f.label) {
        edit = { label };
      }
      if (!edit) { say('Nothing was changed: paint, move or add a box, or change the label first.', true); return; }
      group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: B.Primary }] });
      void send('edit', edit);
    });
  }

  (window as any).__medsight = {
    viewport, layer, state, firstImageMs: () => firstImageMs, shown,
    index: () => viewport.getCurrentImageIdIndex(), voi: () => viewport.getProperties().voiRange,
  };
  app.dataset.viewerReady = '1';

  function cleanup(): void {
    document.removeEventListener('keydown', onKey);
    resize.disconnect();
    element.removeEventListener(Enums.Events.IMAGE_RENDERED, onRendered);
    ToolGroupManager.destroyToolGroup(TOOL_GROUP);
    engine.destroy();
    delete app.dataset.viewerReady;
  }
  return cleanup;
}
