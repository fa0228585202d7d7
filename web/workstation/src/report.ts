/** Report pages the service returns as HTML (a model card, the readers' agreement), shown in a new tab where no
 * script in them can run.
 *
 * The page is shown from a blob: URL, and a blob: document has the workstation's origin: a class name or subgroup
 * value written into a card as `<img onerror=...>`, or a card.html a site copied into a bundle, would otherwise run
 * with the reader's session. The reports need no script (inline CSS, figures as data: URIs), so a
 * Content-Security-Policy placed before anything else in the page blocks every script, inline or loaded, and every
 * request the page could make. The service sends the same policy as a header when a page is opened directly. */

export const REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";

/** `html` with the policy as its first element (a leading doctype is kept in front of it). */
export function withReportPolicy(html: string): string {
  const rest = html.replace(/^\s*<!doctype[^>]*>/i, '');
  return `<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="${REPORT_POLICY}">${rest}`;
}

export function openReport(html: string): void {
  window.open(URL.createObjectURL(new Blob([withReportPolicy(html)], { type: 'text/html' })), '_blank');
}
