/**
 * The demo report's tables: one data structure written to JSON as is and rendered to Markdown and
 * HTML with one number format, so every printed value can be checked against the JSON.
 */

export interface DemoRow {
  metric: string;
  /** true: higher is better; false: lower is better; null: neither (counts, seconds). */
  higherIsBetter: boolean | null;
  /** One per column; null = not available (printed "n/a"). */
  values: (number | null)[];
}

export interface DemoTable {
  id: string;
  title: string;
  columns: string[];
  rows: DemoRow[];
  notes: string[];
}

/** Digits after the decimal point in Markdown and HTML. */
export const TABLE_DECIMALS = 4;

/** Non-finite numbers (NaN from an empty tally) become null, the JSON form of "not available". */
export function finiteOrNull(value: number | undefined | null): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

/** The printed form of a table value: fixed decimals, or "n/a". */
export function formatValue(value: number | null): string {
  if (value === null) return 'n/a';
  const text = value.toFixed(TABLE_DECIMALS);
  // a tiny negative number rounds to "-0.0000": print zero without a sign
  return /^-0\.?0*$/.test(text) ? text.slice(1) : text;
}

/** b − a when both exist. */
export function delta(a: number | null, b: number | null): number | null {
  return a === null || b === null ? null : b - a;
}

function arrow(row: DemoRow): string {
  return row.higherIsBetter === null ? '' : row.higherIsBetter ? ' ↑' : ' ↓';
}

/** GitHub-flavoured Markdown: a heading, the table, then the notes as a list. */
export function tableMarkdown(table: DemoTable): string {
  const head = ['metric', ...table.columns];
  const lines = [`### ${table.title}`, '', `| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const row of table.rows) lines.push(`| ${row.metric}${arrow(row)} | ${row.values.map(formatValue).join(' | ')} |`);
  if (table.notes.length) lines.push('', ...table.notes.map((n) => `- ${n}`));
  return lines.join('\n') + '\n';
}

export function escapeHtml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export function tableHtml(table: DemoTable): string {
  const head = ['metric', ...table.columns].map((c) => `<th>${escapeHtml(c)}</th>`).join('');
  const body = table.rows.map((row) => `<tr><td>${escapeHtml(row.metric + arrow(row))}</td>${row.values.map((v) => `<td class="num">${formatValue(v)}</td>`).join('')}</tr>`).join('\n');
  const notes = table.notes.length ? `<ul class="notes">${table.notes.map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul>` : '';
  return `<h3 id="${escapeHtml(table.id)}">${escapeHtml(table.title)}</h3>\n<table>\n<tr>${head}</tr>\n${body}\n</table>\n${notes}`;
}

/** A fixed-width text rendering for the terminal. */
export function tableText(table: DemoTable): string {
  const head = ['metric', ...table.columns];
  const rows = table.rows.map((r) => [r.metric + arrow(r), ...r.values.map(formatValue)]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [table.title, line(head), ...rows.map(line)].join('\n') + '\n';
}
