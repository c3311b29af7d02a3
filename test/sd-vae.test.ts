import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import '../lib/conformance/sd-vae';
import { runConformanceCase } from '../lib/conformance/registry';
import { vaeCaseOutputs } from '../lib/conformance/sd-vae';
import { VAE } from '../lib/models/sd/vae';
import { disposeAll, Tensor } from '../lib/runtime/tensor';
import { loadSafetensors, readSafetensorsHeader } from '../lib/weights/safetensors';
import { writeSafetensors } from '../lib/weights/safetensors-writer';
import { REFERENCE } from './support/paths';

jest.setTimeout(120000);
const DIR = path.join(REFERENCE, 'sd-vae');
const config = () => JSON.parse(fs.readFileSync(path.join(DIR, 'config.json'), 'utf8'));

test('sd-vae fixture: encode, sample, decode, grad.z, intermediates', async () => {
  const res = await runConformanceCase(DIR);
  const bad = res.results.filter((r) => r.status !== 'ok');
  if (bad.length) console.log(bad);
  expect(bad).toEqual([]);
  expect(res.results.length).toBeGreaterThan(20);
});

test('legacy mid-block attention names (query/key/value/proj_attn) load to identical outputs', async () => {
  const legacyFile = path.join(DIR, 'legacy-attention-names.safetensors');
  const legacyNames = readSafetensorsHeader(legacyFile).tensors.map((t) => t.name);
  expect(legacyNames.some((n) => n.includes('.query.'))).toBe(true);
  // A v1-4-style file: model.safetensors with its mid-block attention tensors under the legacy names only.
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sd-vae-legacy-'));
  const v14 = path.join(tmp, 'v1-4-style.safetensors');
  const current = await loadSafetensors(path.join(DIR, 'model.safetensors'));
  const legacy = await loadSafetensors(legacyFile);
  const replaced = new Set(
    legacyNames.map((n) => n.replace('.query.', '.to_q.').replace('.key.', '.to_k.').replace('.value.', '.to_v.').replace('.proj_attn.', '.to_out.0.')),
  );
  const entries = [...Object.entries(current).filter(([n]) => !replaced.has(n)), ...Object.entries(legacy)].map(([name, t]) => ({
    name,
    dtype: 'F32',
    shape: t.shape,
    data: t.toBuffer(),
  }));
  expect(entries.length).toBe(Object.keys(current).length);
  await writeSafetensors(v14, entries);
  const a = await VAE.create(config());
  const b = await VAE.create(config());
  const io = await loadSafetensors(path.join(DIR, 'io.safetensors'));
  try {
    await a.model.loadWeights([path.join(DIR, 'model.safetensors')]);
    await b.model.loadWeights([v14]); // strict: every key must resolve
    const ra = await vaeCaseOutputs(a, io);
    const rb = await vaeCaseOutputs(b, io);
    for (const name of Object.keys(ra)) expect(rb[name].compare(ra[name], 0, 0).bad).toBe(0);
    disposeAll(ra);
    disposeAll(rb);
  } finally {
    a.dispose();
    b.dispose();
    disposeAll([io, current, legacy]);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('posterior sampling from a seeded generator is reproducible; bad inputs are named', async () => {
  const vae = await VAE.create(config());
  const io = await loadSafetensors(path.join(DIR, 'io.safetensors'), { names: ['input.image'] });
  try {
    await vae.model.loadWeights([path.join(DIR, 'model.safetensors')]);
    const a = await vae.encode(io['input.image'], { seed: 3 });
    const b = await vae.encode(io['input.image'], { seed: 3 });
    const c = await vae.encode(io['input.image'], { seed: 4 });
    expect(a.sample.compare(b.sample, 0, 0).bad).toBe(0);
    expect(a.sample.compare(c.sample, 0, 0).bad).toBeGreaterThan(0);
    expect(a.sampleScaled.compare(a.sample.mul(vae.scalingFactor), 0, 0).bad).toBe(0);
    await expect(vae.decode(io['input.image'])).rejects.toThrow(/z must be \[B, 4, h, w\]/);
    await expect(vae.encode(io['input.image'], { noise: Tensor.zeros([1, 4, 2, 2]) })).rejects.toThrow(/noise/);
    disposeAll([a, b, c]);
  } finally {
    vae.dispose();
    disposeAll(io);
  }
});
