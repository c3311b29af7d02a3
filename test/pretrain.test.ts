import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseSteps, pretrainOptionsFromArgs } from '../lib/cli/commands/pretrain-world';
import { Blip } from '../lib/models/blip';
import { ClipModel } from '../lib/models/clip';
import { StableDiffusionPipeline } from '../lib/models/sd/pipeline';
import {
  DEFAULT_PRETRAIN,
  PretrainResult,
  QUICK_PRETRAIN,
  TRAINING_FILE,
  WORLD_FOLDERS,
  WORLD_MODELS,
  contrastiveLoss,
  findVocabFiles,
  pretrainWorld,
  worldBlipConfig,
  worldUnetConfig,
  worldVaeConfig,
} from '../lib/train/pretrain';
import { readSafetensorsHeader } from '../lib/weights/safetensors';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { loadTokenizer } from '../lib/tokenizers';
import { renderScene } from '../lib/world';
import { ROOT, VOCAB } from './support/paths';

const quiet = { write: () => true };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-pretrain-'));
const world = path.join(tmp, 'world');

function quickRun(out: string, extra: { skipMetrics?: boolean } = {}): Promise<PretrainResult> {
  return pretrainWorld({ ...QUICK_PRETRAIN, out, world, vocab: VOCAB, fixedBatch: true, quiet: true, stream: quiet, command: 'test quick', ...extra });
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('pretrain-world --quick', () => {
  let first: PretrainResult;

  beforeAll(async () => {
    first = await quickRun(path.join(tmp, 'out'));
  }, 120_000);

  test('every model’s loss goes down on a fixed batch', () => {
    for (const part of WORLD_MODELS) {
      const l = first.losses[part];
      expect(l).toHaveLength(QUICK_PRETRAIN.steps[part]);
      l.forEach((x) => expect(Number.isFinite(x)).toBe(true));
      const head = mean(l.slice(0, 2));
      const tail = mean(l.slice(-2));
      if (!(tail < head)) throw new Error(`${part}: loss did not go down: ${l.join(', ')}`);
    }
    expect(first.scalingFactor).toBeGreaterThan(0);
  });

  test('the same seed gives the same losses', async () => {
    const again = await quickRun(path.join(tmp, 'out-again'), { skipMetrics: true });
    for (const part of WORLD_MODELS) expect(again.losses[part]).toEqual(first.losses[part]);
  }, 60_000);

  test('TRAINING.json records the command, seed and held-out metrics', () => {
    const read = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, TRAINING_FILE), 'utf8'));
    const clip = read(first.folders.clip);
    expect(clip.command).toBe('test quick');
    expect(clip.seed).toBe(QUICK_PRETRAIN.seed);
    expect(clip.world.counts).toEqual(QUICK_PRETRAIN.counts);
    expect(clip.metrics.n).toBe(QUICK_PRETRAIN.counts.test);
    expect(clip.metrics.imageToTextTop1).toBeGreaterThanOrEqual(0);
    expect(clip.loss.steps).toBe(QUICK_PRETRAIN.steps.clip);
    const blip = read(first.folders.blip);
    expect(typeof blip.metrics.scores.CIDEr).toBe('number');
    expect(typeof blip.metrics.scores.Bleu_4).toBe('number');
    const sd = read(first.folders.sd);
    expect(sd.metrics.generated.n).toBe(QUICK_PRETRAIN.counts.test);
    expect(sd.metrics.real.color).toBeGreaterThan(0.9); // the detector reads the real images
    expect(sd.vae.scaling_factor).toBeCloseTo(first.scalingFactor, 5);
    expect(JSON.parse(fs.readFileSync(path.join(first.folders.sd, 'vae', 'config.json'), 'utf8')).scaling_factor).toBeCloseTo(first.scalingFactor, 5);
  });

  test('the folders have the published layouts and store float16', () => {
    const sd = first.folders.sd;
    for (const f of ['model_index.json', 'unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'vae/config.json', 'vae/diffusion_pytorch_model.safetensors',
      'text_encoder/config.json', 'text_encoder/model.safetensors', 'tokenizer/vocab.json', 'tokenizer/merges.txt', 'scheduler/scheduler_config.json']) {
      expect(fs.existsSync(path.join(sd, f))).toBe(true);
    }
    for (const f of ['config.json', 'model.safetensors', 'vocab.txt']) expect(fs.existsSync(path.join(first.folders.blip, f))).toBe(true);
    for (const f of ['config.json', 'model.safetensors', 'vocab.json', 'merges.txt']) expect(fs.existsSync(path.join(first.folders.clip, f))).toBe(true);
    const header = readSafetensorsHeader(path.join(first.folders.blip, 'model.safetensors'));
    const dtypes = new Set(header.tensors.map((t) => t.dtype));
    expect([...dtypes]).toEqual(['F16']);
    expect(path.basename(first.folders.blip)).toBe(WORLD_FOLDERS.blip);
  });

  test('the folders load with the ordinary loaders and give outputs of the right shapes', async () => {
    const size = QUICK_PRETRAIN.sizes.imageSize;
    const image = renderScene(JSON.parse(fs.readFileSync(path.join(world, 'world.json'), 'utf8')).entries.test[0], size);

    const blip = await Blip.load(first.folders.blip);
    try {
      const captions = await blip.caption([image, image], { strategy: 'greedy', maxLength: 12 });
      expect(captions).toHaveLength(2);
      expect(typeof captions[0][0]).toBe('string');
      expect(captions[0]).toEqual(captions[1]);
    } finally {
      blip.dispose();
    }

    const clip = await ClipModel.load(first.folders.clip);
    const tok = loadTokenizer(first.folders.clip, 'clip') as any;
    try {
      await noGrad(async () => {
        const ids = Tensor.fromTypedArray(BigInt64Array.from(tok.sd77('a red circle').ids.map(BigInt)), [1, 77], 'int64');
        const text = await clip.encodeText({ inputIds: ids });
        const pixels = Tensor.zeros([2, 3, size, size]);
        const img = await clip.encodeImage(pixels);
        expect(text.shape).toEqual([1, QUICK_PRETRAIN.sizes.clipProjection]);
        expect(img.shape).toEqual([2, QUICK_PRETRAIN.sizes.clipProjection]);
        disposeAll([ids, text, pixels, img]);
      });
    } finally {
      clip.dispose();
    }

    const pipe = await StableDiffusionPipeline.load(first.folders.sd);
    try {
      expect(pipe.vaeFactor).toBe(2 ** (QUICK_PRETRAIN.sizes.vaeChannels.length - 1));
      const out = await pipe.generate(['a large red circle on a plain background'], { steps: 2, guidance: 3, seed: 1 });
      expect(out.images.shape).toEqual([1, 3, size, size]);
      const hidden = await pipe.encodePrompts(['a blue square']);
      expect(hidden.shape).toEqual([1, 77, QUICK_PRETRAIN.sizes.clipTextHidden]);
      disposeAll([out.images, hidden]);
    } finally {
      pipe.unet.dispose();
      pipe.vae.dispose();
      pipe.textEncoder.dispose();
    }
  }, 60_000);
});

describe('pretraining pieces', () => {
  test('contrastive loss: ln(B) for uniform logits, near 0 for a strong diagonal', () => {
    const uniform = Tensor.zeros([4, 4]);
    expect(contrastiveLoss(uniform).item()).toBeCloseTo(Math.log(4), 5);
    const diag = new Float32Array(16);
    for (let i = 0; i < 4; i++) diag[i * 5] = 50;
    expect(contrastiveLoss(Tensor.fromTypedArray(diag, [4, 4])).item()).toBeLessThan(1e-6);
  });

  test('configs: BLIP vocabulary, VAE factor, UNet cross-attention width', () => {
    const blip = worldBlipConfig();
    expect(blip.text_config.vocab_size).toBe(30524);
    expect(blip.vision_config.image_size).toBe(DEFAULT_PRETRAIN.sizes.imageSize);
    expect(blip.architectures).toEqual(['BlipForConditionalGeneration']);
    const unet = worldUnetConfig();
    expect(unet.cross_attention_dim).toBe(DEFAULT_PRETRAIN.sizes.clipTextHidden);
    expect(unet.sample_size * 2 ** (worldVaeConfig().block_out_channels.length - 1)).toBe(DEFAULT_PRETRAIN.sizes.imageSize);
  });

  test('--steps parsing and argument errors name the flag', () => {
    expect(parseSteps('7', DEFAULT_PRETRAIN.steps)).toEqual({ clip: 7, blip: 7, vae: 7, unet: 7 });
    expect(parseSteps('clip=3,unet=9', DEFAULT_PRETRAIN.steps)).toEqual({ ...DEFAULT_PRETRAIN.steps, clip: 3, unet: 9 });
    expect(() => parseSteps('gan=3', DEFAULT_PRETRAIN.steps)).toThrow(/--steps/);
    expect(() => parseSteps('clip=x', DEFAULT_PRETRAIN.steps)).toThrow(/--steps/);
    expect(() => pretrainOptionsFromArgs({ out: 'o', world: 'w', seed: -1, quick: false, f32: false })).toThrow(/--seed/);
    const quick = pretrainOptionsFromArgs({ out: 'o', world: 'w', seed: 3, quick: true, f32: true, steps: 'blip=2' });
    expect(quick.counts).toEqual(QUICK_PRETRAIN.counts);
    expect(quick.steps.blip).toBe(2);
    expect(quick.dtype).toBe('float32');
    expect(() => findVocabFiles(tmp)).toThrow(/vocab\.txt/);
  });
});

describe('shipped world models (weights/)', () => {
  const weights = path.join(ROOT, 'weights');

  test('load with the ordinary loaders and carry their measured metrics', async () => {
    const blip = await Blip.load(path.join(weights, WORLD_FOLDERS.blip));
    blip.dispose();
    const clip = await ClipModel.load(path.join(weights, WORLD_FOLDERS.clip));
    clip.dispose();
    const pipe = await StableDiffusionPipeline.load(path.join(weights, WORLD_FOLDERS.sd));
    pipe.unet.dispose();
    pipe.vae.dispose();
    pipe.textEncoder.dispose();
    for (const name of Object.values(WORLD_FOLDERS)) {
      const record = JSON.parse(fs.readFileSync(path.join(weights, name, TRAINING_FILE), 'utf8'));
      expect(record.metrics).toBeTruthy();
      expect(typeof record.command).toBe('string');
    }
    // The shipped models really learned (well above chance / untrained levels; TRAINING.json has the exact numbers).
    const clipRecord = JSON.parse(fs.readFileSync(path.join(weights, WORLD_FOLDERS.clip, TRAINING_FILE), 'utf8'));
    expect(clipRecord.metrics.imageToTextTop1).toBeGreaterThan(10 * clipRecord.metrics.chance);
    const blipRecord = JSON.parse(fs.readFileSync(path.join(weights, WORLD_FOLDERS.blip, TRAINING_FILE), 'utf8'));
    expect(blipRecord.metrics.scores.CIDEr).toBeGreaterThan(0.3);
    const sdRecord = JSON.parse(fs.readFileSync(path.join(weights, WORLD_FOLDERS.sd, TRAINING_FILE), 'utf8'));
    expect(sdRecord.unet.loss.last).toBeLessThan(sdRecord.unet.loss.first);
    expect(sdRecord.metrics.generated.n).toBe(sdRecord.world.counts.test);
    // Small enough to ship in the package.
    let bytes = 0;
    const walk = (d: string) => fs.readdirSync(d, { withFileTypes: true }).forEach((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : (bytes += fs.statSync(path.join(d, e.name)).size)));
    Object.values(WORLD_FOLDERS).forEach((n) => walk(path.join(weights, n)));
    expect(bytes).toBeLessThan(16e6);
  }, 60_000);
});
