/**
 * BLIP-2 OPT: the reference fixture (forward, losses, gradients, seven generate cases), sharded loading
 * (every family goes through lib/weights/files), the tied LM head rule, config refusals, decoding options
 * and captioning end to end.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import '../lib/conformance/blip2-opt';
import { runConformanceCase } from '../lib/conformance/registry';
import { Blip2, blip2NativeGenerateOptions, blip2ParameterCount } from '../lib/models/blip2';
import { VitModel } from '../lib/models/vit';
import { captionImages } from '../lib/cli/commands/caption';
import { saveRgbPng } from '../lib/image';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { convertShardedCheckpoint, hfWeightFiles } from '../lib/weights/files';
import { inspectWeightsFile } from '../lib/cli/commands/weights-files';
import { loadSafetensors } from '../lib/weights/safetensors';
import { saveTensors } from '../lib/weights/save';
import { CHECKPOINTS, REFERENCE, VOCAB } from './support/paths';

const CASE = path.join(REFERENCE, 'blip2-opt');
const config = JSON.parse(fs.readFileSync(path.join(CASE, 'config.json'), 'utf8'));
const EMBED = 'language_model.model.decoder.embed_tokens.weight';
const HEAD = 'language_model.lm_head.weight';

let tmp: string;
let io: Record<string, Tensor>;
let model: Blip2;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'blip2-test-'));
  io = await loadSafetensors(path.join(CASE, 'io.safetensors'));
  model = await Blip2.load(CASE);
});

afterAll(() => {
  model?.dispose();
  disposeAll(io);
  fs.rmSync(tmp, { recursive: true, force: true });
});

function rowsOf(t: Tensor): number[][] {
  const [n, m] = t.shape;
  const d = Array.from(t.toTypedArray(), Number);
  return Array.from({ length: n }, (_, i) => d.slice(i * m, (i + 1) * m));
}

/** Writes `tensors` as `count` shards + model.safetensors.index.json into `dir`. */
async function writeShards(dir: string, tensors: Record<string, Tensor>, count: number): Promise<string[]> {
  fs.mkdirSync(dir, { recursive: true });
  const names = Object.keys(tensors);
  const weightMap: Record<string, string> = {};
  const files: string[] = [];
  for (let s = 0; s < count; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.safetensors`;
    const part: Record<string, Tensor> = {};
    names.forEach((n, i) => {
      if (i % count === s) {
        part[n] = tensors[n];
        weightMap[n] = file;
      }
    });
    await saveTensors(path.join(dir, file), part, { format: 'pt' });
    files.push(path.join(dir, file));
  }
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  return files;
}

describe('blip2-opt conformance', () => {
  it('reproduces every output of the fixture within its tolerances', async () => {
    const r = await runConformanceCase(CASE);
    const bad = r.results.filter((x) => x.status !== 'ok');
    if (bad.length) console.log(JSON.stringify(bad, null, 1));
    expect(r.results.length).toBe(Object.values<any>(JSON.parse(fs.readFileSync(path.join(CASE, 'case.json'), 'utf8')).tensors).filter((t) => t.role === 'output').length);
    expect(bad).toEqual([]);
  }, 120000);
});

describe('sharded loading', () => {
  it('a BLIP-2 folder split into 3 shards with an index gives the same logits', async () => {
    const dir = path.join(tmp, 'sharded');
    const weights = await loadSafetensors(path.join(CASE, 'model.safetensors'));
    try {
      const shards = await writeShards(dir, weights, 3);
      fs.copyFileSync(path.join(CASE, 'config.json'), path.join(dir, 'config.json'));
      expect(hfWeightFiles(dir)).toEqual(shards);
      const sharded = await Blip2.load(dir);
      try {
        const input = { pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'] };
        const [a, b] = await noGrad(async () => [await model.logits(input), await sharded.logits(input)]);
        expect(a.compare(b, 0, 0).bad).toBe(0);
        disposeAll([a, b]);
      } finally {
        sharded.dispose();
      }
      fs.rmSync(shards[1]);
      expect(() => hfWeightFiles(dir)).toThrow(/shard model-00002-of-00003\.safetensors is missing/);
    } finally {
      disposeAll(weights);
    }
  }, 60000);

  it('other families load through the same index code (ViT)', async () => {
    const vitCase = path.join(REFERENCE, 'vit-dino');
    const dir = path.join(tmp, 'vit-sharded');
    const weights = await loadSafetensors(path.join(vitCase, 'model.safetensors'));
    try {
      await writeShards(dir, weights, 3);
      fs.copyFileSync(path.join(vitCase, 'config.json'), path.join(dir, 'config.json'));
      const vit = await VitModel.load(dir);
      const ref = await VitModel.load(vitCase);
      const pixels = Tensor.randn([1, 3, ref.config.image_size, ref.config.image_size], 1);
      const [a, b] = await noGrad(async () => [(await vit.native.call('forward', { pixel_values: pixels })).last_hidden_state, (await ref.native.call('forward', { pixel_values: pixels })).last_hidden_state]);
      expect(a.compare(b, 0, 0).bad).toBe(0);
      disposeAll([a, b, pixels]);
      vit.native.dispose();
      ref.native.dispose();
    } finally {
      disposeAll(weights);
    }
  }, 60000);

  it('a sharded PyTorch checkpoint converts shard by shard into a safetensors index', async () => {
    const zoo = path.join(CHECKPOINTS, 'pickle-zoo');
    const dir = path.join(tmp, 'bin-sharded');
    fs.mkdirSync(dir, { recursive: true });
    const shards = ['dtypes.pt', 'tied_weights.pt'];
    const weightMap: Record<string, string> = {};
    for (let i = 0; i < shards.length; i++) {
      const name = `pytorch_model-0000${i + 1}-of-00002.bin`;
      fs.copyFileSync(path.join(zoo, shards[i]), path.join(dir, name));
      for (const t of (await inspectWeightsFile(path.join(dir, name))).tensors) weightMap[t.name] = name;
    }
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin.index.json'), JSON.stringify({ weight_map: weightMap }));
    const out = path.join(tmp, 'bin-converted');
    const report = await convertShardedCheckpoint(path.join(dir, 'pytorch_model.bin.index.json'), out);
    expect(report.shards.map((s) => path.basename(s.output))).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    const index = JSON.parse(fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8'));
    expect(Object.keys(index.weight_map).sort()).toEqual(Object.keys(weightMap).sort());
    for (const [name, shard] of Object.entries<string>(weightMap)) expect(index.weight_map[name]).toBe(shard.replace('pytorch_model', 'model').replace('.bin', '.safetensors'));
    expect(hfWeightFiles(out)).toEqual(report.shards.map((s) => s.output));
  }, 60000);

  it('PyTorch-only folders name the conversion to run', () => {
    const dir = path.join(tmp, 'bin-only');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'pytorch_model.bin.index.json'), '{"weight_map": {}}');
    expect(() => hfWeightFiles(dir)).toThrow(/roundtrip weights convert .*pytorch_model\.bin\.index\.json/);
  });
});

describe('reduced-precision files and text-part outputs', () => {
  it('fp16 and bf16 weight files are up-cast on load (logits within half-precision rounding)', async () => {
    const weights = await loadSafetensors(path.join(CASE, 'model.safetensors'));
    const input = { pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'] };
    const ref = await noGrad(() => model.logits(input));
    try {
      for (const [dtype, tol] of [['float16', 2e-2], ['bfloat16', 2e-1]] as const) {
        const half: Record<string, Tensor> = {};
        for (const [n, t] of Object.entries(weights)) half[n] = t.to(undefined, dtype);
        const file = path.join(tmp, `model-${dtype}.safetensors`);
        await saveTensors(file, half);
        disposeAll(Object.values(half));
        const m = await Blip2.load({ config, weights: [file] });
        const params = m.model.parameters();
        expect(params.every((p) => p.dtype === 'float32')).toBe(true);
        const got = await noGrad(() => m.logits(input));
        const c = got.compare(ref, tol, 0);
        expect([dtype, c.bad]).toEqual([dtype, 0]);
        expect(c.maxAbs).toBeGreaterThan(0);
        disposeAll([got]);
        m.dispose();
      }
    } finally {
      disposeAll([ref, ...Object.values(weights)]);
    }
  });

  it('text-only logits are the last T positions; token_probs are their softmax', async () => {
    const input = { pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'] };
    const [full, text, probs] = await noGrad(async () => [await model.logits(input), await model.logits(input, { textOnly: true }), await model.tokenProbs(input, { temperature: 2 })]);
    const [B, QT, V] = full.shape;
    const T = io['input.input_ids'].shape[1];
    expect(text.shape).toEqual([B, T, V]);
    expect(QT).toBe(config.num_query_tokens + T);
    const f = full.toFloat32Array(), t = text.toFloat32Array(), p = probs.toFloat32Array();
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < T; i++) {
        const fo = (b * QT + QT - T + i) * V, to = (b * T + i) * V;
        expect(t[to + 7]).toBe(f[fo + 7]);
        let max = -Infinity, z = 0, sum = 0;
        for (let v = 0; v < V; v++) max = Math.max(max, t[to + v] / 2);
        for (let v = 0; v < V; v++) z += Math.exp(t[to + v] / 2 - max);
        for (let v = 0; v < V; v++) sum += p[to + v];
        expect(p[to + 3]).toBeCloseTo(Math.exp(t[to + 3] / 2 - max) / z, 6);
        expect(sum).toBeCloseTo(1, 5);
      }
    }
    disposeAll([full, text, probs]);
  });
});

describe('tied LM head', () => {
  it('an equal stored copy loads; a differing copy is an error naming both keys', async () => {
    const weights = await loadSafetensors(path.join(CASE, 'model.safetensors'));
    try {
      const equal = path.join(tmp, 'with-head.safetensors');
      await saveTensors(equal, { ...weights, [HEAD]: weights[EMBED] });
      const m = await Blip2.fromConfig(config);
      await m.loadWeights([equal]);
      const differing = path.join(tmp, 'bad-head.safetensors');
      const shifted = weights[EMBED].add(1e-3);
      await saveTensors(differing, { ...weights, [HEAD]: shifted });
      await expect(m.loadWeights([differing])).rejects.toThrow(/language_model\.lm_head\.weight.*language_model\.model\.decoder\.embed_tokens\.weight|language_model\.model\.decoder\.embed_tokens\.weight.*language_model\.lm_head\.weight/);
      shifted.dispose();
      m.dispose();
    } finally {
      disposeAll(weights);
    }
  });

  it('tie_word_embeddings false gives lm_head its own parameter', async () => {
    const m = await Blip2.fromConfig({ ...config, text_config: { ...config.text_config, tie_word_embeddings: false } });
    const names = m.model.parameters().map((p) => p.name);
    expect(names).toContain(HEAD);
    m.dispose();
  });
});

describe('config', () => {
  it('refuses what it does not build, by name', async () => {
    await expect(Blip2.fromConfig({ ...config, use_decoder_only_language_model: false, text_config: { model_type: 't5' } })).rejects.toThrow(/use_decoder_only_language_model/);
    await expect(Blip2.fromConfig({ ...config, text_config: { ...config.text_config, model_type: 't5' } })).rejects.toThrow(/model_type 't5'/);
    await expect(Blip2.fromConfig({ ...config, text_config: { ...config.text_config, word_embed_proj_dim: 16 } })).rejects.toThrow(/word_embed_proj_dim/);
    await expect(Blip2.fromConfig({ ...config, text_config: { ...config.text_config, activation_function: 'gelu_new' } })).rejects.toThrow(/gelu_new/);
    await expect(Blip2.fromConfig({ ...config, qformer_config: { ...config.qformer_config, position_embedding_type: 'relative_key' } })).rejects.toThrow(/position_embedding_type/);
  });

  it('cross-attention every cross_attention_frequency layers, keys sized from the vision width', async () => {
    const m = await Blip2.fromConfig({ ...config, qformer_config: { ...config.qformer_config, num_hidden_layers: 4, cross_attention_frequency: 3 } });
    const names = m.model.parameters().map((p) => p.name);
    const cross = [0, 1, 2, 3].filter((i) => names.includes(`qformer.encoder.layer.${i}.crossattention.attention.query.weight`));
    expect(cross).toEqual([0, 3]);
    m.dispose();
  });

  it('post-LN OPT (do_layer_norm_before false) has no final decoder layer norm and still runs', async () => {
    const m = await Blip2.fromConfig({ ...config, text_config: { ...config.text_config, do_layer_norm_before: false } });
    expect(m.model.parameters().map((p) => p.name)).not.toContain('language_model.model.decoder.final_layer_norm.weight');
    const logits = await noGrad(() => m.logits({ pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'] }));
    expect(logits.shape).toEqual([2, config.num_query_tokens + io['input.input_ids'].shape[1], config.text_config.vocab_size]);
    logits.dispose();
    m.dispose();
  });

  it('the full-size blip2-opt-2.7b parameter count, from per-layer counts (README table total)', async () => {
    const total = Number(/\*\*total\*\* \| \*\*([\d,]+)\*\*/.exec(fs.readFileSync(path.join(CASE, 'README.md'), 'utf8'))![1].replace(/,/g, ''));
    // blip2-opt-2.7b: vision and Q-Former at their defaults, OPT-2.7b text config; one layer of each tower built.
    const m = await Blip2.fromConfig({
      vision_config: { num_hidden_layers: 1 },
      qformer_config: { num_hidden_layers: 2 },
      text_config: { model_type: 'opt', hidden_size: 2560, num_hidden_layers: 1, num_attention_heads: 32, ffn_dim: 10240, eos_token_id: 50118, word_embed_proj_dim: 2560 },
      num_query_tokens: 32,
    });
    const params = m.model.parameters();
    m.dispose();
    const sum = (prefix: string) => params.filter((p) => p.name.startsWith(prefix)).reduce((n, p) => n + p.numel, 0);
    const vLayer = sum('vision_model.encoder.layers.0.');
    const qPair = sum('qformer.encoder.layer.0.') + sum('qformer.encoder.layer.1.');
    const tLayer = sum('language_model.model.decoder.layers.0.');
    const rest = params.reduce((n, p) => n + p.numel, 0) - vLayer - qPair - tLayer;
    expect(rest + 39 * vLayer + 6 * qPair + 32 * tLayer).toBe(total);
    // The closed form the commands use for memory checks agrees, at full size and on the fixture's own config.
    const full = { text_config: { model_type: 'opt', hidden_size: 2560, num_hidden_layers: 32, num_attention_heads: 32, ffn_dim: 10240 } };
    expect(blip2ParameterCount(full)).toBe(total);
    expect(blip2ParameterCount(config)).toBe(model.parameterCount());
  }, 60000);
});

describe('trainable sets (finetuning with BLIP-2 as captioner)', () => {
  it.each([
    ['xattn-q', /^qformer\.encoder\.layer\.\d+\.crossattention\.attention\.query\./],
    ['projection', /^language_projection\./],
  ] as const)('%s: a loss step gives gradients to exactly those tensors, the LM stays frozen', async (set, pattern) => {
    const m = await Blip2.load(CASE);
    try {
      const names = m.setTrainable(set);
      expect(names.length).toBeGreaterThan(0);
      for (const n of names) expect(n).toMatch(pattern);
      const loss = await m.loss({ pixelValues: io['input.pixel_values'], inputIds: io['input.input_ids'], attentionMask: io['input.attention_mask'], labels: io['input.labels'] });
      await loss.backward();
      const all = m.model.tensors();
      for (const [name, t] of Object.entries(all)) {
        const g = t.grad();
        expect([name, g !== undefined && g !== null]).toEqual([name, names.includes(name)]);
        g?.dispose();
      }
      disposeAll(Object.values(all));
      loss.dispose();
      expect(m.setTrainable('none')).toEqual([]);
    } finally {
      m.dispose();
    }
  });
});

describe('generation', () => {
  const pixels = () => io['input.pixel_values'];

  it('max_new_tokens counts from the leading BOS; min_new_tokens holds EOS back', async () => {
    const g = await model.generate(pixels(), { strategy: 'greedy', maxNewTokens: 3, minNewTokens: 3 });
    for (const row of g.sequences) {
      expect(row.length).toBeLessThanOrEqual(4);
      expect(row[0]).toBe(config.text_config.bos_token_id);
    }
    for (const t of g.tokens) expect(t.length).toBe(3);
  });

  it('sampling strategies are reproducible with a seed and give K candidates per image', async () => {
    for (const strategy of ['top-p', 'top-k', 'temperature'] as const) {
      const opts = { strategy, numReturnSequences: 3, seed: 7, temperature: 0.8, maxNewTokens: 5 };
      const a = await model.generate(pixels(), opts);
      const b = await model.generate(pixels(), opts);
      expect(a.sequences.length).toBe(2 * 3);
      expect(a.sequences).toEqual(b.sequences);
      for (const s of a.scores) expect(s).toBeLessThanOrEqual(0);
    }
  });

  it('beam search returns the best K beams, best first, and a prompt is not repeated in the output', async () => {
    const g = await model.generate(pixels(), { strategy: 'beam', numBeams: 3, numReturnSequences: 2, maxNewTokens: 6, minNewTokens: 0 });
    expect(g.sequences.length).toBe(4);
    expect(g.scores[0]).toBeGreaterThanOrEqual(g.scores[1]);
    expect(g.scores[2]).toBeGreaterThanOrEqual(g.scores[3]);
    const prompt = [11, 12, 13];
    const p = await model.generate(pixels(), { strategy: 'greedy', prompt, maxNewTokens: 2 });
    for (const row of p.sequences) expect(row[0]).toBe(config.text_config.bos_token_id);
    expect(p.sequences[0].length).toBeLessThanOrEqual(3);
  });

  it('the native generate equals the fixture greedy case when called through the typed options', async () => {
    const spec = JSON.parse(fs.readFileSync(path.join(CASE, 'case.json'), 'utf8')).generation.cases.greedy_min_length.kwargs;
    const g = await model.generate(pixels(), { strategy: 'greedy', maxNewTokens: spec.max_new_tokens, minLength: spec.min_length, minNewTokens: 0 });
    expect(g.sequences).toEqual(rowsOf(io['generate.greedy_min_length.sequences']));
  });

  it('rejects bad options by name', async () => {
    expect(() => blip2NativeGenerateOptions({ strategy: 'greedy', numReturnSequences: 2 })).toThrow(/numReturnSequences/);
    expect(() => blip2NativeGenerateOptions({ strategy: 'beam', numBeams: 2, numReturnSequences: 3 })).toThrow(/numBeams/);
    await expect(model.model.call('generate', { pixel_values: pixels() }, { no_repeat_ngram_size: 2 })).rejects.toThrow(/no_repeat_ngram_size/);
    await expect(model.model.call('generate', { pixel_values: pixels() }, { max_new_tokens: 100, min_new_tokens: 100 })).rejects.toThrow(/max_position_embeddings/);
  });
});

describe('caption command', () => {
  it('picks BLIP-2 from config.json and captions image files with the OPT tokenizer', async () => {
    const dir = path.join(tmp, 'caption-model');
    fs.mkdirSync(dir, { recursive: true });
    for (const f of ['config.json', 'model.safetensors', 'preprocessor_config.json']) fs.copyFileSync(path.join(CASE, f), path.join(dir, f));
    for (const f of ['vocab.json', 'merges.txt']) fs.copyFileSync(path.join(VOCAB, 'opt', f), path.join(dir, f));
    const images: string[] = [];
    for (let i = 0; i < 2; i++) {
      const w = 48 + 8 * i, h = 40;
      const data = new Uint8Array(w * h * 3);
      for (let j = 0; j < data.length; j++) data[j] = (j * (5 + i) + 17 * i) & 255;
      images.push(path.join(dir, `img${i}.png`));
      await saveRgbPng(images[i], { data, width: w, height: h });
    }
    const req = { images, model: dir, strategy: 'top-k', k: 2, seed: 1, maxLength: 6 };
    const a = await captionImages(req);
    expect(a.map((r) => r.captions.length)).toEqual([2, 2]);
    expect(await captionImages(req)).toEqual(a);
    const beam = await captionImages({ images, model: dir, strategy: 'beam', k: 1, maxLength: 6 });
    expect(beam.length).toBe(2);
  }, 60000);
});

describe('weights pull aliases', () => {
  it('blip2-opt-2.7b / -6.7b are aliases; Flan-T5 variants are refused by name', () => {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { resolvePullTarget } = require('../lib/weights/hub/pull');
    expect(resolvePullTarget('blip2-opt-2.7b').repo).toBe('Salesforce/blip2-opt-2.7b');
    expect(resolvePullTarget('Salesforce/blip2-opt-6.7b').name).toBe('blip2-opt-6.7b');
    expect(() => resolvePullTarget('Salesforce/blip2-flan-t5-xl')).toThrow(/Flan-T5 language model is not supported/);
    expect(() => resolvePullTarget('blip2-flan-t5-xxl')).toThrow(/Flan-T5/);
  });
});
