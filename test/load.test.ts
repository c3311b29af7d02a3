/**
 * The one loader: every family from its folder without naming the kind, single files, aliases, and refusals
 * by name (unknown family, autocast where it does not exist or on CPU).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { load, detectKind, Blip, Blip2, BertModel, ClipModel, VitModel, StableDiffusionPipeline } from '../lib';
import { REFERENCE, ROOT } from './support/paths';

const cases: [string, string, Function][] = [
  [path.join(REFERENCE, 'blip-captioning'), 'blip', Blip],
  [path.join(REFERENCE, 'blip2-opt'), 'blip2', Blip2],
  [path.join(REFERENCE, 'bert-minilm'), 'bert', BertModel],
  [path.join(REFERENCE, 'clip-text-encoder'), 'clip', ClipModel],
  [path.join(REFERENCE, 'clip-vit'), 'clip', ClipModel],
  [path.join(REFERENCE, 'vit-dino'), 'vit', VitModel],
  [path.join(ROOT, 'weights', 'world-sd'), 'sd', StableDiffusionPipeline],
];

describe('load(source)', () => {
  it.each(cases)('%s is read as %s and loads as that family', async (dir, kind, cls) => {
    expect(detectKind(dir)).toBe(kind);
    const model = await load(dir);
    try {
      expect(model).toBeInstanceOf(cls);
    } finally {
      model.dispose();
    }
  });

  it('kind narrows the type and must match a known family', async () => {
    const blip = await load(path.join(REFERENCE, 'blip-captioning'), { kind: 'blip' });
    try {
      expect(blip.imageSize).toBe(JSON.parse(fs.readFileSync(path.join(REFERENCE, 'blip-captioning', 'config.json'), 'utf8')).vision_config.image_size);
    } finally {
      blip.dispose();
    }
    await expect(load(path.join(REFERENCE, 'blip-captioning'), { kind: 'llama' as any })).rejects.toThrow(/kind.*"blip"/);
  });

  it('frozenDtype holds the frozen weights in bf16 on CPU, for the families that support it', async () => {
    const clip = await load(path.join(REFERENCE, 'clip-text-encoder'), { kind: 'clip', frozenDtype: 'bf16' });
    try {
      const weights = Object.values(clip.native.tensors()).filter((t) => t.shape.length >= 2);
      expect(weights.length).toBeGreaterThan(0);
      expect(new Set(weights.map((t) => t.dtype))).toEqual(new Set(['bfloat16']));
    } finally {
      clip.dispose();
    }
    await expect(load(path.join(REFERENCE, 'bert-minilm'), { frozenDtype: 'bf16' })).rejects.toThrow(/frozen dtype bf16: not supported for 'bert'/);
    await expect(load(path.join(REFERENCE, 'bert-minilm'), { frozenDtype: 'int8' as any })).rejects.toThrow(/frozenDtype/);
  });

  it('refuses what it cannot tell or do, by name', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-load-'));
    try {
      expect(() => detectKind(dir)).toThrow(/model_index\.json.*config\.json/);
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama' }));
      expect(() => detectKind(dir)).toThrow(/config\.json model_type.*llama/);
      const weights = path.join(dir, 'x.onnx');
      fs.writeFileSync(weights, 'x');
      expect(() => detectKind(weights)).toThrow(/single file of unknown family; pass kind/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    await expect(load(path.join(REFERENCE, 'bert-minilm'), { dtype: 'bf16' })).rejects.toThrow(/dtype.*fp32 for bert/);
    await expect(load(path.join(REFERENCE, 'blip-captioning'), { dtype: 'fp16' })).rejects.toThrow(/dtype.*fp32 on cpu/);
    await expect(load('no-such-model-anywhere')).rejects.toThrow(/existing folder, a pulled alias.*no-such-model-anywhere/);
  });
});
