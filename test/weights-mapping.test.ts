/**
 * Mapped weights (#22): parameters are views of the safetensors files on CPU, built without random init; the
 * outputs equal a copied load bit for bit, and a trained tensor never writes into its file.
 */
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { NativeModel } from '../lib/runtime/model';
import { memorySnapshot } from '../lib/runtime/memory';
import { AdamW } from '../lib/train/optimizer';
import { Tensor, disposeAll, noGrad } from '../lib/runtime/tensor';
import { loadSafetensors } from '../lib/weights/safetensors';
import { saveTensors } from '../lib/weights/save';
import { REFERENCE } from './support/paths';

jest.setTimeout(120000);

// An fp32 file (the built-in world-sd weights are fp16, which must be converted, i.e. copied).
const UNET_DIR = path.join(REFERENCE, 'sd-unet');
const UNET_FILE = path.join(UNET_DIR, 'model.safetensors');
const config = JSON.parse(fs.readFileSync(path.join(UNET_DIR, 'config.json'), 'utf8'));

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'weights-mapping-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function forward(m: NativeModel): Promise<Tensor> {
  const x = Tensor.randn([2, 4, 16, 16], 1);
  const ehs = Tensor.randn([2, 77, Number(config.cross_attention_dim)], 2);
  const t = Tensor.fromTypedArray(new Float32Array([321]), []);
  try {
    return (await noGrad(() => m.call('forward', { sample: x, timesteps: t, encoder_hidden_states: ehs }))).sample;
  } finally {
    disposeAll([x, ehs, t]);
  }
}

test('a mapped model (no init, no copy) gives the outputs of a copied one, bit for bit', async () => {
  const mapped = await NativeModel.fromFiles('unet', config, [UNET_FILE]);
  const copied = await NativeModel.create('unet', config);
  try {
    const report = await copied.loadWeights([UNET_FILE], { map: false });
    expect(report.mappedBytes).toBe(0);
    // Every byte of the data section went into the model.
    expect(report.copiedBytes).toBe(fs.statSync(UNET_FILE).size - 8 - headerBytes(UNET_FILE));
    const r = mapped.loadReport!;
    expect(r.copiedBytes).toBe(0);
    expect(r.mappedBytes).toBe(report.copiedBytes);
    expect(r.loaded).toBe(report.loaded);
    const [a, b] = [await forward(mapped), await forward(copied)];
    expect(a.compare(b, 0, 0).bad).toBe(0);
    disposeAll([a, b]);
  } finally {
    mapped.dispose();
    copied.dispose();
  }
  // The native cache holds no block of the models just freed.
  expect(memorySnapshot().nativeCachedBytes).toBe(0);
});

function headerBytes(file: string): number {
  const fd = fs.openSync(file, 'r');
  const b = Buffer.alloc(8);
  fs.readSync(fd, b, 0, 8, 0);
  fs.closeSync(fd);
  return Number(b.readBigUInt64LE(0));
}

function digest(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

// One AdamW step (lr 1e-2) of the denoising loss on fixed draws, over `params`.
async function denoisingStep(m: NativeModel, params: Record<string, Tensor>): Promise<void> {
  const optimizer = new AdamW(params, { lr: 1e-2 });
  const latents = Tensor.randn([1, 4, 16, 16], 3);
  const noise = Tensor.randn([1, 4, 16, 16], 4);
  const t = Tensor.fromTypedArray(BigInt64Array.from([400n]), [1], 'int64');
  const ehs = Tensor.randn([1, 77, Number(config.cross_attention_dim)], 5);
  const out = await m.call('denoising_loss', { latents, noise, timesteps: t, encoder_hidden_states: ehs }, { scheduler_config: {} });
  try {
    await out.loss.backward();
    await optimizer.step();
  } finally {
    disposeAll([out, latents, noise, t, ehs]);
  }
}

test('a training step on mapped weights changes the parameter, never the file (bytes and mtime)', async () => {
  const file = path.join(tmp, 'unet.safetensors');
  fs.copyFileSync(UNET_FILE, file);
  const past = new Date(Date.now() - 60_000);
  fs.utimesSync(file, past, past);
  const before = { sha: digest(file), mtime: fs.statSync(file).mtimeMs };
  const m = await NativeModel.fromFiles('unet', config, [file]);
  let k = '';
  try {
    const names = m.setTrainable(['attn2\\.to_q\\.weight$']);
    k = names[0];
    expect(names.length).toBeGreaterThan(0);
    const params = m.tensors(names);
    const original = params[names[0]].clone();
    await denoisingStep(m, params);
    const moved = params[names[0]].compare(original, 0, 0);
    expect(moved.bad).toBeGreaterThan(0);
    disposeAll([original, params]);
  } finally {
    m.dispose();
  }
  expect(digest(file)).toBe(before.sha);
  expect(fs.statSync(file).mtimeMs).toBe(before.mtime);
  // And a fresh load reads the untouched values.
  const io = await loadSafetensors(file, { names: [k] });
  const orig = await loadSafetensors(UNET_FILE, { names: [k] });
  expect(io[k].compare(orig[k], 0, 0).bad).toBe(0);
  disposeAll([io, orig]);
});

test('a file lacking a parameter is refused by name (no parameter is left unfilled)', async () => {
  const all = await loadSafetensors(UNET_FILE);
  const dropped = 'conv_out.bias';
  const kept: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(all)) if (k !== dropped) kept[k] = v;
  const file = path.join(tmp, 'partial.safetensors');
  await saveTensors(file, kept);
  disposeAll(all);
  await expect(NativeModel.fromFiles('unet', config, [file])).rejects.toThrow(/conv_out\.bias/);
  await expect(NativeModel.fromFiles('unet', config, [])).rejects.toThrow(/weight file/);
});

test('releaseWeightPages hands back frozen mapped pages; outputs stay bit-equal; a written tensor keeps its values', async () => {
  const m = await NativeModel.fromFiles('unet', config, [UNET_FILE]);
  const copied = await NativeModel.create('unet', config);
  try {
    await copied.loadWeights([UNET_FILE], { map: false });
    expect(await copied.releaseWeightPages()).toBe(0); // copied weights: nothing mapped to hand back
    const a = await forward(m);
    const released = await m.releaseWeightPages();
    expect(released).toBeGreaterThan(0);
    expect(released).toBeLessThanOrEqual(fs.statSync(UNET_FILE).size);
    const b = await forward(m); // the pages fault in again from the page cache: the same bytes
    expect(b.compare(a, 0, 0).bad).toBe(0);
    // A trained tensor's written pages are private copies: once frozen again they must survive a release.
    const names = m.setTrainable(['attn2\\.to_q\\.weight$']);
    const params = m.tensors(names);
    await denoisingStep(m, params);
    const trained = params[names[0]].clone();
    m.setTrainable([]);
    await m.releaseWeightPages();
    const after = m.tensors([names[0]]);
    expect(after[names[0]].compare(trained, 0, 0).bad).toBe(0);
    disposeAll([a, b, trained, params, after]);
  } finally {
    m.dispose();
    copied.dispose();
  }
});
