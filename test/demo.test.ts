import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { demoOptionsFromArgs } from '../lib/cli/commands/demo';
import { DEFAULT_DEMO, DemoReport, DemoResult, DemoTable, QUICK_DEMO, REPORT_FILES, captionAttributeAccuracy, demoSummaryText, formatValue, runDemo } from '../lib/demo';
import { Blip } from '../lib/models/blip';
import { disposeAll } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { readWorld } from '../lib/world';
import { VOCAB } from './support/paths';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-demo-'));
const out = path.join(tmp, 'demo');
// The committed world models under weights/ when present; otherwise the demo's quick pretraining (vocab from the fixtures).
const quick = () => runDemo({ ...QUICK_DEMO, out, vocab: VOCAB, quiet: true }, 'test quick demo');

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The Markdown table under `### title`: header cells and body rows (cells trimmed). */
function markdownTable(markdown: string, title: string): { head: string[]; rows: string[][] } {
  const lines = markdown.split('\n');
  const at = lines.indexOf(`### ${title}`);
  if (at < 0) throw new Error(`no table titled ${JSON.stringify(title)} in the Markdown`);
  const body: string[] = [];
  for (let i = at + 1; i < lines.length; i++) {
    if (lines[i].startsWith('|')) body.push(lines[i]);
    else if (body.length) break;
  }
  const cells = (line: string) => line.slice(1, -1).split('|').map((c) => c.trim());
  return { head: cells(body[0]), rows: body.slice(2).map(cells) };
}

describe('roundtrip demo --quick', () => {
  let first: DemoResult;
  let json: DemoReport;

  beforeAll(async () => {
    first = await quick();
    json = JSON.parse(fs.readFileSync(first.files.json, 'utf8'));
  }, 300_000);

  test('writes one report folder: tables, index page, rank plots, galleries, loss curves, finetuned folders', () => {
    for (const file of Object.values(REPORT_FILES)) expect(fs.existsSync(path.join(out, file))).toBe(true);
    expect(first.files.index).toBe(path.join(out, REPORT_FILES.index));
    const html = fs.readFileSync(first.files.index, 'utf8');
    for (const phase of ['before', 'after'] as const) {
      for (const direction of ['i2t2i', 't2i2t'] as const) {
        const files = json.phases[phase][direction].report.files;
        for (const file of [files.markdown, files.json, files.gallery, files.ranksJson, ...files.svgs]) {
          expect(fs.existsSync(file)).toBe(true);
          // the index links every one of them, relative to the report folder
          expect(html).toContain(path.relative(out, file).split(path.sep).join('/'));
        }
        expect(fs.readFileSync(path.join(json.phases[phase][direction].dir, 'results.jsonl'), 'utf8').trim().split('\n')).toHaveLength(QUICK_DEMO.items);
      }
    }
    // i2t2i has per-candidate caption quality, hence rank-binned plots
    expect(json.phases.before.i2t2i.report.files.svgs.length).toBeGreaterThan(0);
    // the finetuned pair is arm (e) of the experiment, with the demo's seed
    expect(json.finetune.dir).toBe(path.join(out, 'experiment', 'runs', 'e', `seed-${QUICK_DEMO.seed}`));
    expect(fs.readFileSync(path.join(json.finetune.dir, 'loss-curves.svg'), 'utf8')).toContain('<svg');
    expect(html).toContain(`experiment/runs/e/seed-${QUICK_DEMO.seed}/loss-curves.svg`);
    expect(html).toContain('experiment/intervals.svg');
    // links to files outside the report folder are absolute, never ../../..
    expect(fs.readFileSync(first.files.markdown, 'utf8')).not.toMatch(/\]\(\.\.\//);
    expect(html).not.toMatch(/(href|src)="\.\.\//);
    expect(json.finetune.steps).toBe(QUICK_DEMO.finetuneSteps);
    expect(json.finetune.losses).toHaveLength(QUICK_DEMO.finetuneSteps);
    json.finetune.losses.forEach((l) => expect(Number.isFinite(l)).toBe(true));
  });

  test('every number of the Markdown tables equals the JSON', () => {
    const markdown = fs.readFileSync(first.files.markdown, 'utf8');
    const ids = json.tables.map((t) => t.id);
    for (const id of ['arms', 'headline', 'rerank-i2t2i', 'rerank-t2i2t', 'finetune', 'finetune-losses', 'timing']) expect(ids).toContain(id);
    let compared = 0;
    for (const table of json.tables as DemoTable[]) {
      const md = markdownTable(markdown, table.title);
      expect(md.head).toEqual(['metric', ...table.columns]);
      expect(md.rows).toHaveLength(table.rows.length);
      table.rows.forEach((row, r) => {
        const cells = md.rows[r];
        expect(cells[0].replace(/ [↑↓]$/, '')).toBe(row.metric);
        expect(cells).toHaveLength(row.values.length + 1);
        row.values.forEach((value, c) => {
          const cell = cells[c + 1];
          if (value === null) expect(cell).toBe('n/a');
          else {
            expect(cell).toBe(formatValue(value));
            expect(Math.abs(Number(cell) - value)).toBeLessThanOrEqual(0.5e-4 + 1e-12);
            compared++;
          }
        });
      });
    }
    expect(compared).toBeGreaterThan(50);
  });

  test('the rerank tables carry the rerank reports’ numbers and their deltas', () => {
    const t1 = json.tables.find((t) => t.id === 'rerank-i2t2i')!;
    const cider = t1.rows.find((r) => r.metric === 'CIDEr')!;
    const source = JSON.parse(fs.readFileSync(json.phases.before.i2t2i.report.files.json, 'utf8')).table.rows.find((r: { metric: string }) => r.metric === 'CIDEr');
    expect(cider.values[0]).toBeCloseTo(source.baseline, 12);
    expect(cider.values[1]).toBeCloseTo(source.reranked.clip, 12);
    expect(cider.values[2]).toBeCloseTo(source.reranked.clip - source.baseline, 12);
  });

  test('the world’s ground-truth measures are present: caption and generated-image attribute accuracy, before and after', () => {
    for (const phase of ['before', 'after'] as const) {
      const p = json.phases[phase];
      expect(p.captions.attributes.n).toBe(QUICK_DEMO.items);
      expect(p.i2t2i.attributes.scored).toBe('captions');
      expect(p.i2t2i.attributes.random.n).toBe(QUICK_DEMO.items * QUICK_DEMO.repeats);
      expect(p.i2t2i.attributes.reranked.clip.n).toBe(QUICK_DEMO.items);
      expect(p.t2i2t.attributes.scored).toBe('images');
      expect(p.t2i2t.attributes.reranked['clip-text'].n).toBe(QUICK_DEMO.items);
      expect(p.t2i2t.attributes.allCandidates.n).toBe(QUICK_DEMO.items * QUICK_DEMO.k);
      for (const a of [p.captions.attributes, p.t2i2t.attributes.random]) {
        // colour/shape are counted over every scene object: always defined, a fraction
        expect(a.color).toBeGreaterThanOrEqual(0);
        expect(a.color).toBeLessThanOrEqual(1);
        expect(a.shape).toBeGreaterThanOrEqual(0);
      }
    }
    const t3 = json.tables.find((t) => t.id === 'finetune')!;
    expect(t3.rows.some((r) => r.metric.startsWith('BLIP beam captions: attributes'))).toBe(true);
    expect(t3.rows.some((r) => r.metric.startsWith('SD images (random seed): attributes'))).toBe(true);
    expect(json.statements.some((s) => /^Finetuning, BLIP captions: CIDEr-D: \(a\)/.test(s))).toBe(true);
    expect(json.statements.some((s) => /^At this scale the (method does not help|reconstruction terms help)/.test(s))).toBe(true);
  });

  test('arms (a), (d), (e) with intervals; a verdict only where an interval backs it', () => {
    expect(json.arms.metrics.length).toBeGreaterThan(4);
    const cider = json.arms.metrics.find((m) => m.key === 'cider')!;
    for (const arm of ['a', 'd', 'e']) expect(cider.arms[arm].lo).toBeLessThanOrEqual(cider.arms[arm].value + 1e-12);
    expect(['better', 'worse', 'no significant difference']).toContain(cider.vsD.e.verdict);
    for (const s of json.statements) if (/\b(better|worse)\b/.test(s)) expect(s).toMatch(/\[-?\d/);
    expect(json.statements.filter((s) => /no interval, no verdict/.test(s)).length).toBeGreaterThan(0);
    const md = fs.readFileSync(first.files.markdown, 'utf8');
    expect(md).not.toContain('prompt mismatch');
    expect(md).not.toMatch(/has no prompt setting/);
  });

  test('the attribute measure gives the world’s own captions full marks', async () => {
    const world = await readWorld(json.world.dir);
    const test = world.entries.test;
    const own = captionAttributeAccuracy(test, test.map((e) => e.captions[0]));
    expect(own.consistent).toBe(1);
    expect(own.color).toBe(1);
    // and a wrong caption does not
    const wrong = captionAttributeAccuracy(test, test.map(() => 'a small green cross on a plain background'));
    expect(wrong.consistent).toBeLessThan(1);
  });

  test('the finetuned folders hold the exported partial weights, merged over the base model', async () => {
    expect(json.finetune.change.blip?.tensors).toBeGreaterThan(0);
    expect(json.finetune.change.blip!.maxAbsChange).toBeGreaterThan(0);
    expect(json.finetune.change.unet!.maxAbsChange).toBeGreaterThan(0);
    const exported = await loadSafetensors(json.finetune.exported.blip!);
    const blip = await Blip.load(json.finetune.models.blip);
    const merged = blip.model.tensors(Object.keys(exported));
    try {
      for (const [name, t] of Object.entries(exported)) expect(Array.from(merged[name].toFloat32Array())).toEqual(Array.from(t.toFloat32Array()));
    } finally {
      disposeAll([...Object.values(exported), ...Object.values(merged)]);
      blip.dispose();
    }
  });

  test('the terminal summary names the report and the headline numbers', () => {
    const text = demoSummaryText(first);
    expect(text).toContain(first.files.index);
    expect(text).toContain('i2t2i: caption CIDEr-D');
    expect(text).toMatch(/wall time \d+\.\d s/);
  });

  test('a second run reuses the world and reproduces the numbers before finetuning', async () => {
    expect(first.worldReused).toBe(false);
    const second = await quick();
    expect(second.worldReused).toBe(true);
    expect(second.report.world.reused).toBe(true);
    // same models, seeds and items: the baseline evaluation is the same
    const before = (r: DemoReport) => r.tables.find((t) => t.id === 'rerank-i2t2i')!.rows.map((row) => row.values.slice(0, 3));
    expect(before(second.report)).toEqual(before(json));
    expect(second.report.phases.before.captions.corpus).toEqual(json.phases.before.captions.corpus);
  }, 300_000);
});

describe('demo options', () => {
  test('--quick picks the reduced sizes and explicit flags override either mode', () => {
    const q = demoOptionsFromArgs({ out: 'x', quick: true });
    expect(q).toMatchObject({ items: QUICK_DEMO.items, k: 2, sdSteps: 2, finetuneSteps: 2, quick: true });
    const d = demoOptionsFromArgs({ out: 'x', k: 3, seed: 7, device: 'cuda' });
    expect(d).toMatchObject({ items: DEFAULT_DEMO.items, k: 3, seed: 7, device: 'cuda', quick: false });
  });

  test('bad flags fail before any work, naming the flag', async () => {
    await expect(runDemo({ ...QUICK_DEMO, out: path.join(tmp, 'bad'), k: 1 })).rejects.toThrow(/--k/);
    await expect(runDemo({ ...QUICK_DEMO, out: path.join(tmp, 'bad'), items: 2.5 })).rejects.toThrow(/--items/);
    await expect(runDemo({ ...QUICK_DEMO, out: path.join(tmp, 'bad'), weights: path.join(tmp, 'no-such-folder') })).rejects.toThrow(/--weights/);
    expect(fs.existsSync(path.join(tmp, 'bad', 'runs'))).toBe(false);
  });

  test('refuses to clear a non-empty folder it did not write', async () => {
    const foreign = path.join(tmp, 'foreign');
    fs.mkdirSync(path.join(foreign, 'models'), { recursive: true });
    fs.writeFileSync(path.join(foreign, 'models', 'keep.txt'), 'mine');
    await expect(runDemo({ ...QUICK_DEMO, out: foreign, quiet: true })).rejects.toThrow(/--out: .*not empty/);
    expect(fs.readFileSync(path.join(foreign, 'models', 'keep.txt'), 'utf8')).toBe('mine');
  });
});
