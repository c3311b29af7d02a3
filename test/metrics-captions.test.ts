/**
 * Caption metrics against the COCO caption evaluation fixtures: PTB tokenisation (raw and
 * cocoeval forms, including the ~25k real Karpathy-test captions), BLEU-1..4 / ROUGE-L /
 * CIDEr-D per run and per image, the human-agreement corpus, annotation loaders, and the
 * METEOR / SPICE jar wrappers against small fake jars compiled at test time.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  bleu,
  checkResultsAgainstAnnotations,
  ciderD,
  karpathyImageId,
  loadCaptionAnnotations,
  loadCaptionResults,
  meteorScore,
  parseCaptionAnnotations,
  parseCaptionResults,
  ptbTokenize,
  ptbTokenizeMap,
  ptbTokenizeRaw,
  rougeL,
  scoreCaptions,
  scoreTokenizedCaptions,
  spiceScore,
} from '../lib/metrics';
import { RoundtripError } from '../lib/errors';
import { DATA, METRICS, ROOT } from './support/paths';

const TOL = 1e-9;
const readJson = (file: string): any => JSON.parse(fs.readFileSync(file, 'utf8'));
const coco = readJson(path.join(METRICS, 'coco_caption_metrics.json'));
const human = readJson(path.join(METRICS, 'coco_karpathy_human_agreement.json'));
const METRIC_KEYS = ['Bleu_1', 'Bleu_2', 'Bleu_3', 'Bleu_4', 'ROUGE_L', 'CIDEr'];

function expectClose(actual: number, expected: number, tol: number, what: string): void {
  if (!(Math.abs(actual - expected) <= tol)) throw new Error(`${what}: got ${actual}, expected ${expected} (tolerance ${tol})`);
}

/** Source file of the human-agreement fixture, resolved from its `source_annotations` field. */
function humanAgreementSource(): { candidates: Map<number, string>; references: Map<number, string[]> } {
  const rel: string = String(human.source_annotations).split(' ')[0].replace(/^shared\/data\//, '');
  const entries = readJson(path.join(DATA, rel)) as { image: string; caption: string[] }[];
  const byId = new Map(entries.map((e) => [karpathyImageId(e) as number, e.caption]));
  const candidates = new Map<number, string>();
  const references = new Map<number, string[]>();
  for (const id of human.image_ids as number[]) {
    const caps = byId.get(id);
    if (!caps) throw new Error(`human-agreement image ${id} missing from ${rel}`);
    candidates.set(id, caps[0]);
    references.set(id, caps.slice(1));
  }
  return { candidates, references };
}

describe('PTB tokenizer (Stanford 3.4.1 -preserveLines -lowerCase + cocoeval punctuation removal)', () => {
  test('the extra tokenizer cases: raw PTB output and cocoeval form', () => {
    const cases = coco.ptb_tokenizer_cases as { input: string; ptb_raw: string; cocoeval_tokenized: string }[];
    expect(cases.length).toBeGreaterThan(0);
    expect(ptbTokenizeRaw(cases.map((c) => c.input))).toEqual(cases.map((c) => c.ptb_raw));
    expect(ptbTokenize(cases.map((c) => c.input))).toEqual(cases.map((c) => c.cocoeval_tokenized));
  });

  test('every reference and candidate of coco_caption_metrics.json', () => {
    const refs = coco.images.flatMap((im: any) => im.references);
    expect(ptbTokenizeRaw(refs)).toEqual(coco.images.flatMap((im: any) => im.references_ptb_raw));
    expect(ptbTokenize(refs)).toEqual(coco.images.flatMap((im: any) => im.references_tokenized));
    const cands = coco.images.flatMap((im: any) => im.candidates);
    expect(ptbTokenizeRaw(cands)).toEqual(coco.images.flatMap((im: any) => im.candidates_ptb_raw));
    for (const run of coco.runs) {
      const ids = run.image_ids.map(String);
      expect(ptbTokenize(ids.map((id: string) => run.candidates[id]))).toEqual(ids.map((id: string) => run.candidates_tokenized[id]));
    }
  });

  test('all captions of the human-agreement corpus (real COCO Karpathy test captions)', () => {
    const { candidates, references } = humanAgreementSource();
    const ids = human.image_ids as number[];
    const t0 = process.hrtime.bigint();
    const tokRefs = ptbTokenize(ids.flatMap((id) => references.get(id)!));
    const tokCands = ptbTokenize(ids.map((id) => candidates.get(id)!));
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    console.log(`PTB-tokenised ${tokRefs.length + tokCands.length} captions in ${ms.toFixed(0)} ms`);
    expect(tokCands).toEqual(human.candidates_tokenized);
    expect(tokRefs).toEqual((human.references_tokenized as string[][]).flat());
  });

  test('newlines inside a caption are spaces; bad input is rejected', () => {
    expect(ptbTokenize(['a dog\non a\r\nbed.', 'Two\u2028cats.'])).toEqual(['a dog on a bed', 'two cats']);
    expect(ptbTokenize([])).toEqual([]);
    const byId = ptbTokenizeMap(new Map([['x', ['A cat.', "It's red!"]], ['y', ['(Two) dogs']]]));
    expect([...byId]).toEqual([['x', ['a cat', "it 's red"]], ['y', ['-lrb- two -rrb- dogs']]]);
    expect(() => ptbTokenize([42 as unknown as string])).toThrow(/captions\[0\]: expected a string/);
  });
});

describe('BLEU / ROUGE-L / CIDEr-D on tokenised captions (per run, per image)', () => {
  const imagesById = new Map<number, any>(coco.images.map((im: any) => [im.image_id, im]));
  for (const run of coco.runs) {
    test(`run ${run.name}: corpus, per-image scores and BLEU counts`, () => {
      const ids: number[] = run.image_ids;
      expect(ids.length).toBe(run.n_images);
      const cands = ids.map((id) => run.candidates_tokenized[String(id)]);
      const refs = ids.map((id) => imagesById.get(id).references_tokenized);
      const b = bleu(cands, refs);
      expect(b.corpusStats).toEqual(run.bleu_corpus_stats);
      const scores = scoreTokenizedCaptions(new Map(ids.map((id, i) => [id, cands[i]])), new Map(ids.map((id, i) => [id, refs[i]])));
      for (const k of METRIC_KEYS) expectClose(scores.corpus[k], run.scores[k], TOL, `run ${run.name} ${k}`);
      run.per_image.forEach((p: any, i: number) => {
        expect(p.image_id).toBe(ids[i]);
        for (const k of METRIC_KEYS) expectClose(scores.perImage.get(ids[i])![k], p[k], TOL, `run ${run.name} image ${ids[i]} ${k}`);
        const s = b.perImageStats[i];
        expect({ testlen: s.testlen, reflen_closest: s.reflen, ref_lengths: s.refLengths, guess: s.guess, correct: s.correct }).toEqual(p.bleu_stats);
      });
    });

    test(`run ${run.name}: raw captions through scoreCaptions (cocoeval pipeline) give the same numbers`, async () => {
      const ids: number[] = run.image_ids;
      const scores = await scoreCaptions(
        new Map(ids.map((id) => [id, run.candidates[String(id)]])),
        new Map(ids.map((id) => [id, imagesById.get(id).references])),
      );
      for (const k of METRIC_KEYS) expectClose(scores.corpus[k], run.scores[k], TOL, `run ${run.name} ${k}`);
      run.per_image.forEach((p: any) => {
        for (const k of METRIC_KEYS) expectClose(scores.perImage.get(p.image_id)![k], p[k], TOL, `image ${p.image_id} ${k}`);
      });
    });
  }

  test('human agreement (5,000 Karpathy-test images): tokenised input, corpus and per image', () => {
    const cands: string[] = human.candidates_tokenized;
    const refs: string[][] = human.references_tokenized;
    expect(cands.length).toBe(human.n_images);
    const t0 = process.hrtime.bigint();
    const cider = ciderD(cands, refs);
    console.log(`CIDEr-D on ${cands.length} images in ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(0)} ms`);
    const b = bleu(cands, refs);
    const r = rougeL(cands, refs);
    expectClose(cider.corpus, human.scores.CIDEr, TOL, 'CIDEr');
    expectClose(r.corpus, human.scores.ROUGE_L, TOL, 'ROUGE_L');
    for (let k = 0; k < 4; k++) expectClose(b.corpus[k], human.scores[`Bleu_${k + 1}`], TOL, `Bleu_${k + 1}`);
    for (let i = 0; i < cands.length; i++) {
      expectClose(cider.perImage[i], human.per_image.CIDEr[i], TOL, `CIDEr image ${i}`);
      expectClose(r.perImage[i], human.per_image.ROUGE_L[i], TOL, `ROUGE_L image ${i}`);
      for (let k = 0; k < 4; k++) expectClose(b.perImage[i][k], human.per_image[`Bleu_${k + 1}`][i], TOL, `Bleu_${k + 1} image ${i}`);
    }
  });

  test('human agreement from the raw annotation file through scoreCaptions', async () => {
    const { candidates, references } = humanAgreementSource();
    const scores = await scoreCaptions(candidates, references);
    for (const k of METRIC_KEYS) expectClose(scores.corpus[k], human.scores[k], TOL, k);
  });
});

describe('bad input to the caption scorers', () => {
  const refs = new Map<number, string[]>([
    [1, ['a dog on a bed', 'a brown dog sleeping']],
    [2, ['two cats on a sofa']],
  ]);
  test('a result image id that is not in the annotations', async () => {
    await expect(scoreCaptions(new Map([[3, 'a dog']]), refs)).rejects.toThrow(/image id 3 is not in the references/);
    expect(() => scoreTokenizedCaptions(new Map([[3, 'a dog']]), refs)).toThrow(RoundtripError);
  });
  test('empty captions are errors before tokenisation; captions empty after it are scored like cocoeval', async () => {
    await expect(scoreCaptions(new Map([[1, '   ']]), refs)).rejects.toThrow(/candidates\[1\]: expected a non-empty caption/);
    await expect(scoreCaptions(new Map([[1, 'a dog']]), new Map([[1, ['']]]))).rejects.toThrow(/references\[1\]\[0\]: expected a non-empty caption/);
    const s = await scoreCaptions(new Map([[1, '...'], [2, 'two cats on a sofa']]), refs);
    expect(s.tokenized.candidates.get(1)).toBe('');
    expect(s.perImage.get(1)!.CIDEr).toBe(0);
    expect(s.perImage.get(1)!.ROUGE_L).toBe(0);
    expect(s.perImage.get(2)!.ROUGE_L).toBeCloseTo(1, 12);
  });
  test('mismatched lengths, empty reference lists, unknown metric names', () => {
    expect(() => bleu(['a b'], [['a b'], ['c']])).toThrow(/one reference list per candidate \(1\)/);
    expect(() => ciderD(['a b', 'c'], [['a b']])).toThrow(RoundtripError);
    expect(() => rougeL(['a b'], [[]])).toThrow(/references\[0\]: expected a non-empty array/);
    expect(() => scoreTokenizedCaptions(new Map([[1, 'a']]), new Map([[1, []]]))).toThrow(/references\[1\]/);
    expect(() => scoreTokenizedCaptions(new Map([[1, 'a']]), refs, { metrics: ['BLUE' as 'BLEU'] })).toThrow(/metrics/);
    expect(() => scoreTokenizedCaptions(new Map(), refs)).toThrow(/candidates: expected at least one image/);
  });
});

describe('annotation loaders', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-ann-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test('Karpathy layout and COCO ground-truth layout of the same split agree', () => {
    const karpathy = loadCaptionAnnotations(path.join(DATA, 'coco-karpathy', 'coco_karpathy_test.json'));
    const gt = loadCaptionAnnotations(path.join(DATA, 'coco-karpathy', 'coco_karpathy_test_gt.json'));
    expect(karpathy.layout).toBe('karpathy');
    expect(gt.layout).toBe('coco');
    expect(karpathy.references.size).toBe(gt.references.size);
    for (const [id, caps] of karpathy.references) expect(gt.references.get(id)).toEqual(caps);
    const first = readJson(path.join(DATA, 'coco-karpathy', 'coco_karpathy_test.json'))[0];
    expect(karpathy.imagePaths.get(karpathyImageId(first)!)).toBe(first.image);
  });

  test('results layout, single-caption Karpathy entries and clear errors', () => {
    const file = path.join(tmp, 'results.json');
    fs.writeFileSync(file, JSON.stringify([{ image_id: 5, caption: 'a dog' }, { image_id: 7, caption: 'a cat' }]));
    const results = loadCaptionResults(file);
    expect([...results]).toEqual([[5, 'a dog'], [7, 'a cat']]);
    expect(() => checkResultsAgainstAnnotations(results, new Map([[5, ['x']]]), file)).toThrow(/1 image id\(s\) not in the annotations: 7/);
    expect(() => parseCaptionResults([{ image_id: 1, caption: 'a' }, { image_id: 1, caption: 'b' }], 'r.json')).toThrow(/image_id 1 appears more than once/);
    expect(() => parseCaptionResults([{ image_id: 1, caption: 3 }], 'r.json')).toThrow(/r\.json: entry 0\.caption: expected a caption string/);
    const single = parseCaptionAnnotations([{ image: 'x/COCO_val2014_000000000042.jpg', caption: 'one' }], 'k.json');
    expect([...single.references]).toEqual([[42, ['one']]]);
    expect(() => parseCaptionAnnotations([{ image: 'a.jpg', caption: [] }], 'k.json')).toThrow(/entry 0\.caption: expected at least one caption/);
    expect(() => parseCaptionAnnotations({ images: [] }, 'g.json')).toThrow(/g\.json: top level/);
    expect(() => parseCaptionAnnotations([{ image_id: 1, caption: 'a' }], 'r.json')).toThrow(/this is a results file/);
    expect(() => parseCaptionAnnotations({ annotations: [{ image_id: null, caption: 'a' }] }, 'g.json')).toThrow(/annotations\[0\]\.image_id/);
    const broken = path.join(tmp, 'broken.json');
    fs.writeFileSync(broken, '{not json');
    expect(() => loadCaptionAnnotations(broken)).toThrow(/broken\.json:\d+:\d+: not valid JSON/);
    expect(() => loadCaptionAnnotations(path.join(tmp, 'missing.json'))).toThrow(/missing\.json: cannot read/);
  });
});

const haveJdk = ['javac', 'jar', 'java'].every((tool) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0);
(haveJdk ? describe : describe.skip)('METEOR / SPICE jar wrappers (fake jars compiled at test time)', () => {
  let work: string;
  let meteorJar: string;
  let spiceJar: string;
  const build = (name: string): string => {
    const classes = path.join(work, `${name}-classes`);
    fs.mkdirSync(classes);
    const src = path.join(ROOT, 'test', 'fixtures-java', `${name}.java`);
    const javac = spawnSync('javac', ['--release', '8', '-nowarn', '-d', classes, src], { encoding: 'utf8' });
    if (javac.status !== 0) throw new Error(`javac ${name}: ${javac.stderr}`);
    const jarFile = path.join(work, name === 'FakeMeteor' ? 'meteor-1.5.jar' : 'spice-1.0.jar');
    const jar = spawnSync('jar', ['--create', '--file', jarFile, '--main-class', name, '-C', classes, '.'], { encoding: 'utf8' });
    if (jar.status !== 0) throw new Error(`jar ${name}: ${jar.stderr}`);
    return jarFile;
  };
  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-jars-'));
    meteorJar = build('FakeMeteor');
    spiceJar = build('FakeSpice');
  });
  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  const cands = new Map<number, string>([
    [20, 'a dog on a bed ||| extra'],
    [3, 'two cats'],
    [100, 'a red bus'],
  ]);
  const refs = new Map<number, string[]>([
    [3, ['two cats on a sofa', 'cats']],
    [20, ['a dog sleeping on a bed']],
    [100, ['a bus on a street', 'a red double decker bus', 'the bus']],
  ]);

  test('METEOR: SCORE lines per sorted image id, then EVAL; per-image and corpus scores mapped back', async () => {
    const r = await meteorScore(cands, refs, { meteorJar });
    // the fake jar scores matched/hyp words; '|||' is removed from hypotheses as pycocoevalcap does
    const expected = new Map([
      [20, 5 / 6],
      [3, 1],
      [100, 1],
    ]);
    for (const [id, v] of expected) expect(r.perImage.get(id)).toBeCloseTo(v, 12);
    expect(r.corpus).toBeCloseTo((5 + 2 + 3) / (6 + 2 + 3), 12);
  });

  test('SPICE: input JSON for sorted ids, output parsed like spice.py (NaN strings, mean of All.f)', async () => {
    const cacheDir = path.join(work, 'spice-cache');
    const r = await spiceScore(cands, refs, { spiceJar, cacheDir });
    expect(fs.existsSync(path.join(cacheDir, 'fake-cache-touched'))).toBe(true);
    expect(r.perImage.get(20)!.All.f).toBeCloseTo(0.7, 12);
    expect(r.perImage.get(3)!.All.f).toBeCloseTo(0.2, 12);
    expect(r.perImage.get(100)!.All.tp).toBe(3);
    expect(Number.isNaN(r.perImage.get(3)!.Object.f)).toBe(true);
    expect(r.corpus).toBeCloseTo((0.7 + 0.2 + 0.3) / 3, 12);
  });

  test('scoreCaptions passes tokenised captions to both jars', async () => {
    const s = await scoreCaptions(new Map([[1, 'A dog, on a bed.']]), new Map([[1, ['A dog sleeping on a bed.']]]), {
      metrics: ['METEOR', 'SPICE', 'BLEU'],
      meteorJar,
      spiceJar,
      cacheDir: path.join(work, 'c2'),
    });
    expect(s.perImage.get(1)!.METEOR).toBeCloseTo(1, 12); // "a dog on a bed": every word is in the reference
    expect(s.corpus.SPICE).toBeCloseTo(0.5, 12); // five tokens after tokenisation
    expect(s.corpus.Bleu_1).toBeGreaterThan(0);
  });

  test('missing jar or missing java give errors that say where to get them', async () => {
    await expect(meteorScore(cands, refs, { meteorJar: path.join(work, 'nope.jar') })).rejects.toThrow(/meteor-1\.5\.jar not found .*pycocoevalcap/);
    await expect(spiceScore(cands, refs, { spiceJar: path.join(work, 'nope.jar') })).rejects.toThrow(/spice-1\.0\.jar not found .*panderson\.me\/spice/);
    await expect(meteorScore(cands, refs, { meteorJar, java: path.join(work, 'no-java-here') })).rejects.toThrow(/could not start Java/);
    await expect(meteorScore(new Map([[9, 'x']]), refs, { meteorJar })).rejects.toThrow(/image id 9 of the candidates has no references/);
  });
});
