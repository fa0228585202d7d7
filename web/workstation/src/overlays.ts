// What the AI produced, drawn over the Cornerstone3D viewport in image-pixel coordinates (the viewport's own
// world<->canvas transform places them, so they follow zoom, pan and scroll), and the reader's edits of it:
// SEG masks (fill with opacity, or outline; brush paint/erase), the Grad-CAM Secondary Capture (heatmap), boxes
// with scores (move, add, delete). A box with a ``frame`` is drawn, hit and moved on that frame of its image only;
// one without lies on every frame (drawn dashed on a multi-frame image, and placed on the frame shown once moved).
import type { Box } from './api';

export type Vec2 = [number, number];

/** The image shown: its SOP instance, which frame of it (1-based) and how many frames it has. */
export interface Shown { sop: string; frame: number; frames: number }

/** Whether box ``b`` lies on the image shown (on its frame when it names one, on every frame when not). */
export function onShown(b: Box, shown: Shown): boolean {
  return b.sop_uid === shown.sop && (b.frame == null || b.frame === shown.frame);
}

/** A box of an edit as the review API takes it: corners ordered, the finding's label when it has none, ``frame`` only
 * when the box has one (nothing new for single-frame images). */
export function boxForApi(b: Box, label: string): Record<string, unknown> {
  return {
    sop_uid: b.sop_uid, x0: Math.min(b.x0, b.x1), y0: Math.min(b.y0, b.y1), x1: Math.max(b.x0, b.x1),
    y1: Math.max(b.y0, b.y1), label: b.label ?? label, ...(b.frame != null ? { frame: b.frame } : {}),
  };
}

/** Maps image pixels (0,0 = the top-left corner of the first pixel) to canvas CSS pixels and back. */
export interface Mapper {
  toCanvas(x: number, y: number): Vec2;
  toImage(cx: number, cy: number): Vec2;
}

export interface MaskSet {
  rows: number; cols: number;
  bySop: Map<string, Uint8Array>;
  edited: Set<string>;
}

interface FindingOverlay {
  kind: 'seg' | 'heatmap' | 'boxes';
  color: [number, number, number];
  mask?: MaskSet;
  heatmap?: { bitmap: ImageBitmap; sop: string | null };
  boxes?: Box[];
  boxesEdited?: boolean;
}

const COLORS: [number, number, number][] = [[255, 80, 60], [60, 200, 255], [250, 200, 40], [120, 230, 120]];

export type EditTool = 'none' | 'paint' | 'erase' | 'box-move' | 'box-add';

export class OverlayLayer {
  readonly overlays = new Map<string, FindingOverlay>();
  readonly visible = new Set<string>();
  style: 'fill' | 'outline' = 'fill';
  opacity = 0.4;
  editing: { finding: string; tool: EditTool; radius: number } | null = null;
  selectedBox: number | null = null;
  private drag: { start: Vec2; box?: Box; orig?: Box; created?: Box } | null = null;

  constructor(
    readonly canvas: HTMLCanvasElement,
    private mapper: () => Mapper | null,
    private shown: () => Shown | null,
    private currentSize: () => Vec2 | null,
    target: HTMLElement = canvas,
  ) {
    // Listen on the viewport's container in the capture phase: while a tool is on, the reader's strokes are ours
    // and never reach Cornerstone's tools (which listen to mouse events on their own element, under ours).
    const mine = (_e: Event): boolean => !!this.editing && this.editing.tool !== 'none';
    target.addEventListener('pointerdown', (e) => { if (mine(e)) { e.stopPropagation(); this.down(e); } }, true);
    target.addEventListener('pointermove', (e) => { if (mine(e)) { e.stopPropagation(); this.move(e); } }, true);
    for (const type of ['mousedown', 'mousemove', 'mouseup']) {
      target.addEventListener(type, (e) => { if (mine(e)) { e.stopPropagation(); e.preventDefault(); } }, true);
    }
    window.addEventListener('pointerup', () => { this.drag = null; });
  }

  add(finding: string, overlay: Omit<FindingOverlay, 'color'>): void {
    this.overlays.set(finding, { ...overlay, color: COLORS[this.overlays.size % COLORS.length] });
  }

  toggle(finding: string, on?: boolean): boolean {
    const show = on ?? !this.visible.has(finding);
    if (show) this.visible.add(finding); else this.visible.delete(finding);
    this.draw();
    return show;
  }

  setEditing(finding: string | null, tool: EditTool = 'none', radius = 4): void {
    this.editing = finding ? { finding, tool, radius } : null;
    this.canvas.classList.toggle('editing', !!finding && tool !== 'none');
    if (finding) this.visible.add(finding);
    this.draw();
  }

  draw(): void {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext('2d') as CanvasRenderingContext2D;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, c.width, c.height);
    const m = this.mapper();
    const shown = this.shown();
    if (!m || !shown) return;
    const sop = shown.sop;
    const o = m.toCanvas(0, 0), px = m.toCanvas(1, 0), py = m.toCanvas(0, 1);
    const imageTransform = (): void => ctx.setTransform(
      dpr * (px[0] - o[0]), dpr * (px[1] - o[1]), dpr * (py[0] - o[0]), dpr * (py[1] - o[1]), dpr * o[0], dpr * o[1]);
    let drawn = 0;
    for (const [finding, ov] of this.overlays) {
      if (!this.visible.has(finding)) continue;
      if (ov.kind === 'seg' && ov.mask) {
        const mask = ov.mask.bySop.get(sop);
        if (!mask) continue;
        imageTransform();
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(this.maskImage(mask, ov.mask.cols, ov.mask.rows, ov.color), 0, 0);
        drawn++;
      } else if (ov.kind === 'heatmap' && ov.heatmap) {
        if (ov.heatmap.sop && ov.heatmap.sop !== sop) continue;
        const size = this.currentSize();
        if (!size) continue;
        imageTransform();
        ctx.globalAlpha = this.opacity + 0.15;
        ctx.imageSmoothingEnabled = true;
        ctx.drawImage(ov.heatmap.bitmap, 0, 0, size[0], size[1]);
        ctx.globalAlpha = 1;
        drawn++;
      } else if (ov.kind === 'boxes' && ov.boxes) {
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        ov.boxes.forEach((b, i) => {
          if (!onShown(b, shown)) return;
          const a = m.toCanvas(Math.min(b.x0, b.x1), Math.min(b.y0, b.y1));
          const z = m.toCanvas(Math.max(b.x0, b.x1), Math.max(b.y0, b.y1));
          const editingThis = this.editing?.finding === finding && this.selectedBox === i;
          ctx.strokeStyle = editingThis ? '#ffffff' : `rgb(${ov.color.join(',')})`;
          ctx.lineWidth = editingThis ? 3 : 2;
          ctx.setLineDash(b.frame == null && shown.frames > 1 ? [6, 4] : []); // on every frame: not placed yet
          ctx.strokeRect(a[0], a[1], z[0] - a[0], z[1] - a[1]);
          ctx.setLineDash([]);
          ctx.fillStyle = ctx.strokeStyle;
          ctx.font = '13px system-ui';
          const score = b.score == null ? '' : ` ${b.score.toFixed(2)}`;
          ctx.fillText(`${b.label ?? ''}${score}`, a[0] + 2, a[1] - 4);
          drawn++;
        });
      }
    }
    this.canvas.dataset.drawn = String(drawn);
  }

  private maskImage(mask: Uint8Array, cols: number, rows: number, color: [number, number, number]): HTMLCanvasElement {
    const off = document.createElement('canvas');
    off.width = cols; off.height = rows;
    const octx = off.getContext('2d') as CanvasRenderingContext2D;
    const img = octx.createImageData(cols, rows);
    const alpha = Math.round(255 * this.opacity);
    for (let y = 0; y < rows; y++) {
      for (let x = 0; x < cols; x++) {
        const i = y * cols + x;
        if (!mask[i]) continue;
        if (this.style === 'outline') {
          const edge = x === 0 || y === 0 || x === cols - 1 || y === rows - 1 ||
            !mask[i - 1] || !mask[i + 1] || !mask[i - cols] || !mask[i + cols];
          if (!edge) continue;
        }
        img.data.set([color[0], color[1], color[2], this.style === 'outline' ? 255 : alpha], 4 * i);
      }
    }
    octx.putImageData(img, 0, 0);
    return off;
  }

  // ---- editing ------------------------------------------------------------------------------------------------

  private at(e: PointerEvent): Vec2 | null {
    const m = this.mapper();
    if (!m) return null;
    const r = this.canvas.getBoundingClientRect();
    return m.toImage(e.clientX - r.left, e.clientY - r.top);
  }

  private down(e: PointerEvent): void {
    const ed = this.editing;
    const p = this.at(e);
    if (!ed || !p) return;
    e.preventDefault();
    const ov = this.overlays.get(ed.finding);
    const shown = this.shown();
    if (!ov || !shown) return;
    const sop = shown.sop;
    if ((ed.tool === 'paint' || ed.tool === 'erase') && ov.mask) {
      this.drag = { start: p };
      this.paint(ov.mask, sop, p, ed.tool === 'paint', ed.radius);
    } else if (ed.tool === 'box-move' && ov.boxes) {
      const i = ov.boxes.findIndex((b) => onShown(b, shown) && p[0] >= Math.min(b.x0, b.x1) &&
        p[0] <= Math.max(b.x0, b.x1) && p[1] >= Math.min(b.y0, b.y1) && p[1] <= Math.max(b.y0, b.y1));
      this.selectedBox = i >= 0 ? i : null;
      if (i >= 0) this.drag = { start: p, box: ov.boxes[i], orig: { ...ov.boxes[i] } };
    } else if (ed.tool === 'box-add' && ov.boxes) {
      const label = ov.boxes[0]?.label ?? '';
      const created: Box = { sop_uid: sop, x0: p[0], y0: p[1], x1: p[0], y1: p[1], label };
      if (shown.frames > 1) created.frame = shown.frame; // the frame shown; none on a single-frame image
      ov.boxes.push(created);
      ov.boxesEdited = true;
      this.selectedBox = ov.boxes.length - 1;
      this.drag = { start: p, created };
    }
    this.draw();
  }

  private move(e: PointerEvent): void {
    const ed = this.editing, d = this.drag;
    if (!ed || !d) return;
    const p = this.at(e);
    const ov = this.overlays.get(ed.finding);
    const shown = this.shown();
    if (!p || !ov || !shown) return;
    if ((ed.tool === 'paint' || ed.tool === 'erase') && ov.mask) {
      this.paint(ov.mask, shown.sop, p, ed.tool === 'paint', ed.radius);
    } else if (d.box && d.orig) {
      const dx = p[0] - d.start[0], dy = p[1] - d.start[1];
      Object.assign(d.box, { x0: d.orig.x0 + dx, x1: d.orig.x1 + dx, y0: d.orig.y0 + dy, y1: d.orig.y1 + dy });
      // a box on every frame of a multi-frame image, moved by the reader, is on the frame the reader moved it on
      if (d.box.frame == null && shown.frames > 1) d.box.frame = shown.frame;
      ov.boxesEdited = true;
    } else if (d.created) {
      d.created.x1 = p[0]; d.created.y1 = p[1];
    }
    this.draw();
  }

  /** Paint (or erase) a disc of ``radius`` pixels at ``p`` on the mask of image ``sop``. */
  paint(set: MaskSet, sop: string, p: Vec2, on: boolean, radius: number): void {
    let mask = set.bySop.get(sop);
    if (!mask) { mask = new Uint8Array(set.rows * set.cols); set.bySop.set(sop, mask); }
    const [cx, cy] = [Math.floor(p[0]), Math.floor(p[1])];
    for (let y = Math.max(0, cy - radius); y <= Math.min(set.rows - 1, cy + radius); y++) {
      for (let x = Math.max(0, cx - radius); x <= Math.min(set.cols - 1, cx + radius); x++) {
        if ((x - cx) ** 2 + (y - cy) ** 2 <= radius * radius) mask[y * set.cols + x] = on ? 1 : 0;
      }
    }
    set.edited.add(sop);
  }

  deleteSelectedBox(finding: string): void {
    const ov = this.overlays.get(finding);
    if (!ov?.boxes || this.selectedBox == null) return;
    ov.boxes.splice(this.selectedBox, 1);
    ov.boxesEdited = true;
    this.selectedBox = null;
    this.draw();
  }
}

/** A mask as a PNG (white = foreground) in base64, the form the verdict API takes. */
export function maskPng(mask: Uint8Array, cols: number, rows: number): string {
  const c = document.createElement('canvas');
  c.width = cols; c.height = rows;
  const ctx = c.getContext('2d') as CanvasRenderingContext2D;
  const img = ctx.createImageData(cols, rows);
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 255 : 0;
    img.data[4 * i] = v; img.data[4 * i + 1] = v; img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c.toDataURL('image/png').split(',')[1];
}

/** Unpack a 1-bit (BINARY SEG) frame, least significant bit first (PS3.5 8.1.1), or threshold an 8-bit one. */
export function unpackFrame(bytes: Uint8Array, rows: number, cols: number, bitsAllocated: number): Uint8Array {
  const out = new Uint8Array(rows * cols);
  if (bitsAllocated === 1) {
    for (let i = 0; i < out.length; i++) out[i] = (bytes[i >> 3] >> (i & 7)) & 1;
  } else {
    for (let i = 0; i < out.length; i++) out[i] = bytes[i] > 0 ? 1 : 0;
  }
  return out;
}
