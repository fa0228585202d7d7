// The worklist: studies by priority (urgent positive and deferred results first), filters, keyboard navigation.
import { worklist, type Finding, type WorklistStudy } from './api';

const FILTERS_KEY = 'medsight.filters';

export function esc(text: unknown): string {
  return String(text ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function findingBadge(f: Finding): string {
  const p = f.probability == null ? '–' : f.probability.toFixed(2);
  const cls = f.defer ? 'defer' : f.positive ? 'positive' : f.positive === false ? 'negative' : '';
  const flag = f.defer ? ' · defer' : '';
  return `<span class="pill ${cls}" title="${esc(f.model)} ${esc(f.model_version)}">${esc(f.label)} ${p}${flag}</span>`;
}

function when(s: WorklistStudy): string {
  const d = s.study_date;
  const study = d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : '';
  const received = s.received_at ? new Date(s.received_at).toLocaleString() : '';
  return study ? `${study}<br><span class="muted">${esc(received)}</span>` : esc(received);
}

export async function showWorklist(app: HTMLElement): Promise<() => void> {
  const saved = JSON.parse(sessionStorage.getItem(FILTERS_KEY) || '{}') as Record<string, string>;
  app.innerHTML = `
    <div class="filters">
      <label>Modality <input id="f-modality" size="6" value="${esc(saved.modality)}"></label>
      <label>AI status <select id="f-status">
        ${['', 'none', 'queued', 'running', 'done', 'failed'].map((v) =>
          `<option value="${v}" ${saved.status === v ? 'selected' : ''}>${v || 'any'}</option>`).join('')}
      </select></label>
      <label>Model <input id="f-model" size="14" value="${esc(saved.model)}"></label>
      <label>Reviewed <select id="f-reviewed">
        ${['', 'no', 'yes'].map((v) =>
          `<option value="${v}" ${saved.reviewed === v ? 'selected' : ''}>${v || 'any'}</option>`).join('')}
      </select></label>
      <button id="f-refresh">Refresh</button>
      <span class="muted">↑/↓ to move, Enter to open</span>
    </div>
    <table class="worklist" id="worklist">
      <thead><tr><th>Priority</th><th>Patient</th><th>Modality</th><th>Time</th><th>AI</th><th>Findings</th>
      <th>Reviewed</th></tr></thead>
      <tbody></tbody>
    </table>
    <div class="error" id="worklist-error"></div>`;
  const body = app.querySelector('tbody') as HTMLElement;
  let studies: WorklistStudy[] = [];
  let selected = 0;

  const filters = (): Record<string, string> => ({
    modality: (app.querySelector('#f-modality') as HTMLInputElement).value.trim(),
    status: (app.querySelector('#f-status') as HTMLSelectElement).value,
    model: (app.querySelector('#f-model') as HTMLInputElement).value.trim(),
    reviewed: (app.querySelector('#f-reviewed') as HTMLSelectElement).value,
  });

  const select = (i: number): void => {
    selected = Math.max(0, Math.min(studies.length - 1, i));
    body.querySelectorAll('tr').forEach((tr, j) => tr.classList.toggle('selected', j === selected));
    body.querySelectorAll('tr')[selected]?.scrollIntoView({ block: 'nearest' });
  };
  const open = (i: number): void => {
    if (studies[i]) location.hash = `#/study/${encodeURIComponent(studies[i].study_uid)}`;
  };

  const load = async (): Promise<void> => {
    const f = filters();
    sessionStorage.setItem(FILTERS_KEY, JSON.stringify(f));
    try {
      studies = (await worklist(f)).studies;
    } catch (exc) {
      (app.querySelector('#worklist-error') as HTMLElement).textContent = String(exc);
      return;
    }
    body.innerHTML = studies.map((s, i) => `
      <tr data-study="${esc(s.study_uid)}" data-index="${i}">
        <td title="${esc(s.priority_reason)}">${esc(Number(s.priority).toFixed(1))}
          <div class="muted">${esc(s.priority_reason)}</div></td>
        <td class="patient">${s.patient_name != null || s.patient_id != null
          ? `${esc(s.patient_name)}<br><span class="muted">${esc(s.patient_id)}</span>`
          : '<span class="muted">hidden</span>'}</td>
        <td>${esc(s.modalities.join(', '))}</td>
        <td>${when(s)}</td>
        <td><span class="pill">${esc(s.ai_status)}</span></td>
        <td>${s.findings.map(findingBadge).join(' ') || '<span class="muted">none</span>'}</td>
        <td>${s.reviewed ? 'yes' : 'no'}</td>
      </tr>`).join('');
    body.querySelectorAll('tr').forEach((tr, i) => {
      tr.addEventListener('click', () => select(i));
      tr.addEventListener('dblclick', () => open(i));
    });
    app.dataset.loaded = String(studies.length);
    select(Math.min(selected, studies.length - 1));
  };

  const onKey = (event: KeyboardEvent): void => {
    if ((event.target as HTMLElement).closest('input, select, textarea')) return;
    if (event.key === 'ArrowDown') { select(selected + 1); event.preventDefault(); }
    else if (event.key === 'ArrowUp') { select(selected - 1); event.preventDefault(); }
    else if (event.key === 'Enter') { open(selected); event.preventDefault(); }
    else if (event.key === 'Home') { select(0); event.preventDefault(); }
    else if (event.key === 'End') { select(studies.length - 1); event.preventDefault(); }
  };
  document.addEventListener('keydown', onKey);
  app.querySelectorAll('.filters input, .filters select').forEach((el) => el.addEventListener('change', () => void load()));
  app.querySelector('#f-refresh')?.addEventListener('click', () => void load());
  const timer = window.setInterval(() => void load(), 15000);
  await load();
  return () => { document.removeEventListener('keydown', onKey); window.clearInterval(timer); };
}
