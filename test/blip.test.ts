import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import '../lib/conformance/blip-captioning';
import { runConformanceCase } from '../lib/conformance/registry';
import { Blip, blipArchitectureConfig, blipConfigFromOriginal, blipNativeGenerateOptions, originalBlipKeyToHf } from '../lib/models/blip';
import { captionImages, captionOptions } from '../lib/cli/commands/caption';
import { saveRgbPng } from '../lib/image';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { convertToSafetensors } from '../lib/weights/convert';
import { loadSafetensors, readSafetensorsHeader } from '../lib/weights/safetensors';
import { writeSafetensors } from '../lib/weights/safetensors-writer';
import { CHECKPOINTS, REFERENCE, VOCAB } from './support/paths';

const CASE = path.join(REFERENCE, 'blip-captioning');
const ORIGINAL = path.join(CHECKPOINTS, 'blip-original');
const caseJson = JSON.parse(fs.readFileSync(path.join(CASE, 'case.json'), 'utf8'));
const tol = (name: string) => ({ atol: caseJson.tensors[name].recommended_atol as number, rtol: caseJson.tensors[name].recommended_rtol as number });

let tmp: string;
let io: Record<string, Tensor>;
let blip: Blip;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'blip-test-'));
  io = await loadSafetensors(path.join(CASE, 'io.safetensors'));
  blip = await Blip.load(CASE);
});

afterAll(() => {
  blip?.dispose();
  disposeAll(io);
  fs.rmSync(tmp, { recursive: true, force: true });
});

function expectClose(mine: Tensor, ref: Tensor, atol: number, rtol: number): void {
  expect(mine.shape).toEqual(ref.shape);
  const c = mine.compare(ref, atol, rtol);
  expect(c.bad).toBe(0);
}

function rowsOf(t: Tensor): number[][] {
  const [n, m] = t.shape;
  const d = Array.from(t.toTypedArray(), Number);
  return Array.from({ length: n }, (_, i) => d.slice(i * m, (i + 1) * m));
}

const text = () => ({ pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'] });

describe('blip-captioning conformance', () => {
  it('reproduces every output of the fixture', async () => {
    const r = await runConformanceCase(CASE);
    const bad = r.results.filter((x) => x.status !== 'ok');
    if (bad.length) console.log(JSON.stringify(bad, null, 1));
    expect(r.results.length).toBeGreaterThan(10);
    expect(bad).toEqual([]);
  }, 120000);
});

describe('original salesforce/BLIP layout', () => {
  it('maps the original key names', () => {
    expect(originalBlipKeyToHf('visual_encoder.cls_token')).toBe('vision_model.embeddings.class_embedding');
    expect(originalBlipKeyToHf('visual_encoder.blocks.3.attn.proj.weight')).toBe('vision_model.encoder.layers.3.self_attn.projection.weight');
    expect(originalBlipKeyToHf('visual_encoder.norm.bias')).toBe('vision_model.post_layernorm.bias');
    expect(originalBlipKeyToHf('text_decoder.cls.predictions.bias')).toBe('text_decoder.cls.predictions.bias');
  });

  it('converted model.pth gives the outputs of the transformers weights, bit for bit', async () => {
    const converted = path.join(tmp, 'original.safetensors');
    await convertToSafetensors(path.join(ORIGINAL, 'model.pth'), converted);
    // The file keeps the original names, tied LM-head copies and the position_ids buffer.
    const keys = readSafetensorsHeader(converted).tensors.map((t) => t.name);
    expect(keys).toContain('visual_encoder.pos_embed');
    expect(keys).toContain('text_decoder.cls.predictions.decoder.weight');
    const vit = JSON.parse(fs.readFileSync(path.join(ORIGINAL, 'vit_config.json'), 'utf8'));
    const med = JSON.parse(fs.readFileSync(path.join(ORIGINAL, 'med_config.json'), 'utf8'));
    for (const config of [path.join(CASE, 'config.json'), blipConfigFromOriginal(vit, med)]) {
      const orig = await Blip.load({ config, weights: [converted] });
      try {
        await noGrad(async () => {
          const a = await orig.logits(text());
          const b = await blip.logits(text());
          expectClose(a, b, 0, 0);
          expectClose(a, io['output.logits'], tol('output.logits').atol, tol('output.logits').rtol);
          const v = await orig.vision(io['input.pixel_values']);
          expectClose(v.lastHiddenState, io['output.vision_last_hidden_state'], tol('output.vision_last_hidden_state').atol, 1e-4);
          const g = await orig.generate(io['input.pixel_values'], { strategy: 'beam', numBeams: 3, maxLength: 20, minLength: 5 });
          expect(g.sequences).toEqual(rowsOf(io['generate.beam3.sequences']));
          disposeAll([a, b, v]);
        });
      } finally {
        orig.dispose();
      }
    }
  }, 60000);

  it('merges the partial cross-attention query file as DalleFlamingo does', async () => {
    const partial = path.join(tmp, 'partial.safetensors');
    await convertToSafetensors(path.join(ORIGINAL, 'partial-xattn-q.pth'), partial);
    const expected = await loadSafetensors(path.join(ORIGINAL, 'partial-xattn-q.expected.safetensors'));
    const merged = await Blip.load({ config: path.join(CASE, 'config.json'), weights: [path.join(CASE, 'model.safetensors')], partial: [partial] });
    try {
      // The partial tensors replaced the model's.
      const partialNames = Object.keys(expected).filter((k) => k.startsWith('partial.')).map((k) => k.slice('partial.'.length));
      expect(partialNames.length).toBeGreaterThan(0);
      const params = merged.model.tensors(partialNames);
      for (const n of partialNames) expectClose(params[n], expected[`partial.${n}`], 0, 0);
      disposeAll(params);
      await noGrad(async () => {
        const logits = await merged.logits(text());
        const V = logits.shape[2];
        const first = logits.narrow(2, 0, Math.min(1024, V));
        expectClose(first, expected['merged.logits_first_1024'], tol('output.logits').atol, tol('output.logits').rtol);
        expect(Array.from(logits.argmax(-1).toTypedArray())).toEqual(Array.from(expected['merged.logits_argmax'].toTypedArray()));
        const loss = await merged.loss({ ...text(), labels: io['input.labels'] }, { labelSmoothing: 0.1 });
        expectClose(loss, expected['merged.loss_label_smoothing_0.1'], tol('output.loss').atol, 1e-4);
        // And the merge changed something: the unmerged model differs.
        const base = await blip.logits(text());
        expect(base.compare(logits, 1e-6, 0).bad).toBeGreaterThan(0);
        disposeAll([logits, first, loss, base]);
      });
    } finally {
      merged.dispose();
      disposeAll(expected);
    }
  }, 60000);
});

describe('parameter counts', () => {
  // Per-tensor analytic count of BlipForConditionalGeneration (tied LM head counted once).
  function analytic(config: any): number {
    const v = config.vision_config;
    const t = config.text_config;
    const H = v.hidden_size, I = v.intermediate_size, P = v.patch_size, N = (v.image_size / P) ** 2;
    const linear = (i: number, o: number) => i * o + o;
    const ln = (d: number) => 2 * d;
    const visionLayer = ln(H) + linear(H, 3 * H) + linear(H, H) + ln(H) + linear(H, I) + linear(I, H);
    const vision = H + (3 * P * P * H + H) + (N + 1) * H + v.num_hidden_layers * visionLayer + ln(H);
    const D = t.hidden_size, F = t.intermediate_size, E = v.hidden_size;
    const selfAttn = 3 * linear(D, D) + linear(D, D) + ln(D);
    const crossAttn = linear(D, D) + 2 * linear(E, D) + linear(D, D) + ln(D);
    const textLayer = selfAttn + crossAttn + linear(D, F) + linear(F, D) + ln(D);
    const text = t.vocab_size * D + t.max_position_embeddings * D + ln(D) + t.num_hidden_layers * textLayer;
    const head = linear(D, D) + ln(D) + t.vocab_size;
    return vision + text + head;
  }

  it.each([
    ['base', 247e6],
    ['large', 470e6],
  ] as const)('BLIP-%s matches the analytic per-tensor sum (~%d with the tied LM head counted twice)', async (size, published) => {
    const config: any = blipArchitectureConfig(size);
    const model = await Blip.fromConfig(config);
    try {
      const count = model.parameterCount();
      expect(count).toBe(analytic(config));
      // The published figures count the weight file's tensors, where the LM-head decoder weight and bias
      // are stored beside the word embeddings and predictions bias they are tied to.
      const tiedCopies = config.text_config.vocab_size * config.text_config.hidden_size + config.text_config.vocab_size;
      expect(Math.abs(count + tiedCopies - published) / published).toBeLessThan(0.005);
      console.log(`BLIP-${size}: ${count} unique parameters, ${count + tiedCopies} with the tied LM-head copies`);
    } finally {
      model.dispose();
    }
  }, 120000);

  it('the tiny fixture model has the analytic count too', () => {
    const config = JSON.parse(fs.readFileSync(path.join(CASE, 'config.json'), 'utf8'));
    expect(blip.parameterCount()).toBe(analytic(config));
  });
});

describe('generation', () => {
  const pixels = () => io['input.pixel_values'];

  it('greedy and beam match transformers through the typed API', async () => {
    const greedy = await blip.generate(pixels(), { strategy: 'greedy', maxLength: 20, minLength: 5 });
    expect(greedy.sequences).toEqual(rowsOf(io['generate.greedy.sequences']));
    const beam = await blip.generate(pixels(), { strategy: 'beam', numBeams: 3, maxLength: 20, minLength: 5 });
    expect(beam.sequences).toEqual(rowsOf(io['generate.beam3.sequences']));
    // tokens: no start token, cut at EOS.
    for (const [i, row] of beam.tokens.entries()) {
      expect(row).not.toContain(102);
      expect(row).toEqual(beam.sequences[i].slice(1, 1 + row.length));
    }
  });

  it('a prompt starts decoding from [BOS] + prompt and is stripped from the tokens', async () => {
    const promptIds = rowsOf(io['input.prompt_input_ids'])[0];
    const prompt = promptIds.slice(1, -1); // without [CLS] and [SEP]
    const g = await blip.generate(pixels(), { strategy: 'greedy', maxLength: 20, minLength: 5, prompt });
    expect(g.sequences).toEqual(rowsOf(io['generate.prompt_greedy.sequences']));
    expect(g.promptLength).toBe(1 + prompt.length);
    expect(g.tokens[0]).toEqual(g.sequences[0].slice(g.promptLength, g.promptLength + g.tokens[0].length));
  });

  it('beam search returns K distinct beams, best first', async () => {
    const g = await blip.generate(pixels(), { strategy: 'beam', numBeams: 4, numReturnSequences: 3 });
    expect(g.sequences.length).toBe(2 * 3);
    for (let i = 0; i < 2; i++) {
      const mine = g.sequences.slice(i * 3, i * 3 + 3).map((r) => r.join(','));
      expect(new Set(mine).size).toBe(3);
      const s = g.scores.slice(i * 3, i * 3 + 3);
      expect(s[0]).toBeGreaterThanOrEqual(s[1]);
      expect(s[1]).toBeGreaterThanOrEqual(s[2]);
    }
  });

  it.each(['top-p', 'top-k', 'temperature'] as const)('%s sampling is reproducible by seed and gives K distinct candidates', async (strategy) => {
    const opts = { strategy, numReturnSequences: 4, seed: 1234, temperature: 1.5, maxLength: 20, minLength: 5 };
    const a = await blip.generate(pixels(), opts);
    const b = await blip.generate(pixels(), opts);
    expect(a.sequences).toEqual(b.sequences);
    expect(a.sequences.length).toBe(8);
    for (let i = 0; i < 2; i++) expect(new Set(a.sequences.slice(i * 4, i * 4 + 4).map((r) => r.join(','))).size).toBe(4);
    const c = await blip.generate(pixels(), { ...opts, seed: 99 });
    expect(c.sequences).not.toEqual(a.sequences);
    // Every sequence starts with BOS and respects max_length.
    for (const row of a.sequences) {
      expect(row[0]).toBe(30522);
      expect(row.length).toBeLessThanOrEqual(20);
    }
  });

  it('top-k 1 sampling equals greedy decoding', async () => {
    const s = await blip.generate(pixels(), { strategy: 'top-k', topK: 1, seed: 5 });
    expect(s.sequences).toEqual(rowsOf(io['generate.greedy.sequences']));
  });

  it('the shared generation core refuses what BLIP does not implement, by name', async () => {
    const px = { pixel_values: pixels() };
    await expect(blip.model.call('generate', px, { max_new_tokens: 5 })).rejects.toThrow(/max_new_tokens is not supported/);
    await expect(blip.model.call('generate', px, { min_new_tokens: 1 })).rejects.toThrow(/min_new_tokens is not supported/);
    await expect(blip.model.call('generate', px, { no_repeat_ngram_size: 2 })).rejects.toThrow(/no_repeat_ngram_size/);
    await expect(blip.model.call('generate', px, { max_length: 0 })).rejects.toThrow(/max_length must be >= 1/);
  });

  it('repetition penalty changes the ids of a long greedy caption', async () => {
    const plain = await blip.generate(pixels(), { strategy: 'greedy', maxLength: 20, minLength: 19 });
    const penal = await blip.generate(pixels(), { strategy: 'greedy', maxLength: 20, minLength: 19, repetitionPenalty: 5 });
    expect(penal.sequences).not.toEqual(plain.sequences);
  });

  it('interpolates position embeddings like transformers (vit-dino-384 hf reference)', async () => {
    const dino = path.join(REFERENCE, 'vit-dino-384');
    const cfg = JSON.parse(fs.readFileSync(path.join(dino, 'config.json'), 'utf8'));
    const dinoCase = JSON.parse(fs.readFileSync(path.join(dino, 'case.json'), 'utf8'));
    const model = await Blip.fromConfig({
      vision_config: { hidden_size: cfg.hidden_size, patch_size: cfg.patch_size, image_size: cfg.image_size, num_attention_heads: cfg.num_attention_heads, num_hidden_layers: 1, intermediate_size: cfg.intermediate_size },
      text_config: { hidden_size: 8, num_attention_heads: 2, num_hidden_layers: 1, intermediate_size: 8, vocab_size: 8, max_position_embeddings: 8 },
    });
    const dinoIo = await loadSafetensors(path.join(dino, 'io.safetensors'));
    try {
      await model.model.loadWeights([path.join(dino, 'model.safetensors')], { renames: { 'embeddings.position_embeddings': 'vision_model.embeddings.position_embedding' }, partial: true, allowUnexpected: ['.*'] });
      for (const c of ['sq', 'rect']) {
        const [, , h, w] = dinoIo[`input.pixel_values.${c}`].shape;
        const pos = await model.positionEmbedding(h, w);
        const name = `output.hf.${c}.pos_embed`;
        expectClose(pos, dinoIo[name], dinoCase.tensors[name].recommended_atol, dinoCase.tensors[name].recommended_rtol);
        pos.dispose();
      }
    } finally {
      model.dispose();
      disposeAll(dinoIo);
    }
  });

  it('runs at another image size (interpolated position embeddings)', async () => {
    const px = Tensor.randn([1, 3, 96, 80], 3);
    try {
      const v = await noGrad(() => blip.vision(px));
      expect(v.lastHiddenState.shape).toEqual([1, 1 + 6 * 5, 32]);
      const f = Array.from(v.lastHiddenState.toFloat32Array());
      expect(f.every(Number.isFinite)).toBe(true);
      disposeAll(v);
    } finally {
      px.dispose();
    }
  });

  it('timing: beam 3 and K samples on the tiny model', async () => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 5; i++) await blip.generate(pixels(), { strategy: 'beam', numBeams: 3, maxLength: 20, minLength: 5 });
    const t1 = process.hrtime.bigint();
    for (let i = 0; i < 5; i++) await blip.generate(pixels(), { strategy: 'top-p', numReturnSequences: 5, seed: i });
    const t2 = process.hrtime.bigint();
    console.log(`tiny BLIP, batch 2: beam3 ${(Number(t1 - t0) / 5e6).toFixed(1)} ms/call, top-p K=5 ${(Number(t2 - t1) / 5e6).toFixed(1)} ms/call`);
  });

  it('token probabilities are softmax(logits / T) and carry gradients', async () => {
    const probs = await blip.tokenProbs(text(), { temperature: 2 });
    expect(probs.shape).toEqual(io['output.logits'].shape);
    const sums = probs.sum(-1).toFloat32Array();
    for (const s of sums) expect(Math.abs(s - 1)).toBeLessThan(1e-4);
    expect(probs.requiresGrad).toBe(true);
    disposeAll([probs]);
  });
});

describe('errors', () => {
  it('rejects bad generate options', () => {
    expect(() => blipNativeGenerateOptions({ strategy: 'nucleus' as any })).toThrow(/strategy.*"greedy"/);
    expect(() => blipNativeGenerateOptions({ numReturnSequences: 0 })).toThrow(/numReturnSequences/);
    expect(() => blipNativeGenerateOptions({ strategy: 'beam', numBeams: 2, numReturnSequences: 3 })).toThrow(/numReturnSequences/);
    expect(() => blipNativeGenerateOptions({ strategy: 'greedy', numReturnSequences: 2 })).toThrow(/greedy/);
  });

  it('the API and the CLI default to the same beams: K captions alone raise the beam count to K', () => {
    expect(blipNativeGenerateOptions({ strategy: 'beam' }).num_beams).toBe(3);
    expect(blipNativeGenerateOptions({ strategy: 'beam', numReturnSequences: 5 })).toMatchObject({ num_beams: 5, num_return_sequences: 5 });
    const cli = captionOptions({ images: ['a.png'], model: 'm', k: 5 });
    expect(blipNativeGenerateOptions(cli)).toMatchObject({ num_beams: 5, num_return_sequences: 5 });
  });

  it('CLI options: --k < 1 and unknown strategies are named', () => {
    expect(() => captionOptions({ images: ['a.png'], model: 'm', k: 0 })).toThrow(/--k/);
    expect(() => captionOptions({ images: ['a.png'], model: 'm', strategy: 'nucleus' })).toThrow(/--strategy/);
    expect(() => captionOptions({ images: ['a.png'], model: 'm', strategy: 'greedy', k: 2 })).toThrow(/--k/);
  });

  async function brokenCopy(mutate: (name: string, t: Tensor) => { shape: number[]; data: Buffer } | null): Promise<string> {
    const dir = fs.mkdtempSync(path.join(tmp, 'broken-'));
    fs.copyFileSync(path.join(CASE, 'config.json'), path.join(dir, 'config.json'));
    const tensors = await loadSafetensors(path.join(CASE, 'model.safetensors'));
    const entries = [];
    for (const [name, t] of Object.entries(tensors)) {
      const changed = mutate(name, t);
      if (changed === null) continue;
      entries.push({ name, dtype: 'F32', shape: changed.shape, data: changed.data });
    }
    await writeSafetensors(path.join(dir, 'model.safetensors'), entries);
    disposeAll(tensors);
    return dir;
  }

  async function copyWith(entriesOf: (tensors: Record<string, Tensor>) => { name: string; shape: number[]; data: Buffer }[]): Promise<string> {
    const dir = fs.mkdtempSync(path.join(tmp, 'layout-'));
    fs.copyFileSync(path.join(CASE, 'config.json'), path.join(dir, 'config.json'));
    const tensors = await loadSafetensors(path.join(CASE, 'model.safetensors'));
    await writeSafetensors(path.join(dir, 'model.safetensors'), entriesOf(tensors).map((e) => ({ ...e, dtype: 'F32' })));
    disposeAll(tensors);
    return dir;
  }

  it('DDP "module." prefixes and a text decoder saved without "text_decoder." load as they are', async () => {
    const dir = await copyWith((ts) =>
      Object.entries(ts).map(([name, t]) => ({ name: 'module.' + name.replace(/^text_decoder\./, ''), shape: t.shape, data: t.toBuffer() })),
    );
    const m = await Blip.load(dir);
    try {
      await noGrad(async () => {
        const a = await m.logits(text());
        const b = await blip.logits(text());
        expectClose(a, b, 0, 0);
        disposeAll([a, b]);
      });
    } finally {
      m.dispose();
    }
  }, 60000);

  it('tied LM-head copies: equal ones load, differing ones are an error naming both keys', async () => {
    const tiedKey = 'text_decoder.cls.predictions.decoder.weight';
    const embKey = 'text_decoder.bert.embeddings.word_embeddings.weight';
    const withCopy = (perturb: boolean) =>
      copyWith((ts) => {
        const entries = Object.entries(ts).map(([name, t]) => ({ name, shape: t.shape, data: t.toBuffer() }));
        const emb = ts[embKey];
        const data = Buffer.from(emb.toBuffer());
        if (perturb) data.writeFloatLE(data.readFloatLE(4) + 0.5, 4);
        entries.push({ name: tiedKey, shape: emb.shape, data });
        return entries;
      });
    const equal = await Blip.load(await withCopy(false));
    equal.dispose();
    const differing = await withCopy(true);
    const esc = (k: string) => k.replace(/\./g, '\\.');
    await expect(Blip.load(differing)).rejects.toThrow(new RegExp(`^(?=.*'${esc(embKey)}')(?=.*'${esc(tiedKey)}').*are tied`));
  }, 60000);

  it('a missing key is named', async () => {
    const key = 'text_decoder.bert.encoder.layer.1.crossattention.self.key.weight';
    const dir = await brokenCopy((name, t) => (name === key ? null : { shape: t.shape, data: t.toBuffer() }));
    await expect(Blip.load(dir)).rejects.toThrow(key);
  });

  it('a mis-shaped key is named with both shapes', async () => {
    const key = 'vision_model.encoder.layers.0.mlp.fc1.bias';
    const dir = await brokenCopy((name, t) => (name === key ? { shape: [t.shape[0] - 1], data: t.toBuffer().subarray(0, 4 * (t.shape[0] - 1)) } : { shape: t.shape, data: t.toBuffer() }));
    await expect(Blip.load(dir)).rejects.toThrow(new RegExp(`${key.replace(/\./g, '\\.')} is \\[\\d+\\], the model expects \\[\\d+\\]`));
  });

  it('a missing folder or config is a clear error', async () => {
    await expect(Blip.load(path.join(tmp, 'nope'))).rejects.toThrow(/config\.json/);
  });
});

describe('caption command', () => {
  let modelDir: string;
  let imagePaths: string[];

  beforeAll(async () => {
    modelDir = fs.mkdtempSync(path.join(tmp, 'model-'));
    for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(CASE, f), path.join(modelDir, f));
    fs.copyFileSync(path.join(VOCAB, 'bert-base-uncased', 'vocab.txt'), path.join(modelDir, 'vocab.txt'));
    imagePaths = [];
    for (let i = 0; i < 3; i++) {
      const w = 40 + 10 * i, h = 50;
      const data = new Uint8Array(w * h * 3);
      for (let j = 0; j < data.length; j++) data[j] = (j * (7 + i) + i * 31) & 255;
      const p = path.join(modelDir, `img${i}.png`);
      await saveRgbPng(p, { data, width: w, height: h });
      imagePaths.push(p);
    }
  });

  it('captions image files in batches, K per image, reproducibly', async () => {
    const req = { images: imagePaths, model: modelDir, strategy: 'top-p', k: 2, seed: 3, batchSize: 2 };
    const a = await captionImages(req);
    expect(a.map((r) => r.image)).toEqual(imagePaths);
    for (const r of a) {
      expect(r.captions.length).toBe(2);
      for (const c of r.captions) expect(typeof c).toBe('string');
    }
    expect(await captionImages(req)).toEqual(a);
  }, 30000);

  it('a prompt is not part of the caption text', async () => {
    const withPrompt = await captionImages({ images: imagePaths.slice(0, 1), model: modelDir, strategy: 'greedy', prompt: 'a picture of' });
    expect(withPrompt[0].captions[0].startsWith('a picture of')).toBe(false);
  });

  it('an unreadable image is named', async () => {
    const missing = path.join(modelDir, 'missing.png');
    await expect(captionImages({ images: [imagePaths[0], missing], model: modelDir })).rejects.toThrow(missing);
  });
});
