import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadSafetensors } from '../lib/weights/safetensors';
import { saveTensors } from '../lib/weights/save';
import { disposeAll } from '../lib/runtime/tensor';
import { METRICS, REFERENCE, ROOT, VOCAB } from './support/paths';

// The CLI as users run it: the compiled bin (npm test compiles with tsc first).
function roundtrip(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'roundtrip.js'), ...args], { encoding: 'utf8', env: { ...process.env, ROUNDTRIP_QUIET: '1' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const hasDist = fs.existsSync(path.join(ROOT, 'dist', 'cli', 'index.js'));
const maybe = hasDist ? describe : describe.skip;

maybe('roundtrip CLI', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rt-cli-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test('info reports libtorch, BLAS, devices and threads', () => {
    const r = roundtrip('info', '--json');
    expect(r.code).toBe(0);
    const info = JSON.parse(r.out);
    expect(info.libtorch).toMatch(/^\d+\.\d+/);
    expect(info.devices).toContain('cpu');
    expect(Array.isArray(info.blasLoaded)).toBe(true);
    expect(info.threads).toBeGreaterThanOrEqual(1);
    expect(info.modelKinds).toEqual(expect.arrayContaining(['blip', 'clip', 'unet', 'vae', 'vit', 'bert', 'inception']));
  });

  test('ROUNDTRIP_THREADS sets the intra-op threads', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'roundtrip.js'), 'info', '--json'], { encoding: 'utf8', env: { ...process.env, ROUNDTRIP_THREADS: '1' } });
    expect(JSON.parse(r.stdout).threads).toBe(1);
    const bad = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'roundtrip.js'), 'info'], { encoding: 'utf8', env: { ...process.env, ROUNDTRIP_THREADS: 'many' } });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/ROUNDTRIP_THREADS: expected an integer >= 1, got "many"/);
  });

  test('conformance passes a reference folder and fails (exit 1) when an output is off', async () => {
    const ok = roundtrip('conformance', path.join(REFERENCE, 'vit-dino'));
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/vit-dino .*PASS/);
    expect(ok.out).toMatch(/output\.cls +allclose/);
    // A copy whose expected CLS is shifted by 1e-3: far outside its tolerance.
    const bad = path.join(tmp, 'vit-dino');
    fs.mkdirSync(bad);
    for (const f of ['case.json', 'config.json', 'model.safetensors']) fs.copyFileSync(path.join(REFERENCE, 'vit-dino', f), path.join(bad, f));
    const io = await loadSafetensors(path.join(REFERENCE, 'vit-dino', 'io.safetensors'));
    io['output.cls'] = io['output.cls'].add(1e-3);
    await saveTensors(path.join(bad, 'io.safetensors'), io);
    disposeAll(io);
    const r = roundtrip('conformance', bad);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/output\.cls .*FAIL/);
  });

  test('conformance runs the tokenizer cases and names the cases that differ', () => {
    const ok = roundtrip('conformance', METRICS, '--vocab', VOCAB);
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/tokenizers .*PASS/);
    expect(ok.out).toMatch(/clip\.sd_input_ids_77 +exact/);
    const bad = path.join(tmp, 'metrics');
    fs.mkdirSync(bad);
    const fixture = JSON.parse(fs.readFileSync(path.join(METRICS, 'tokenizer_cases.json'), 'utf8'));
    fixture.cases[0].bert.ids[0] += 1;
    fs.writeFileSync(path.join(bad, 'tokenizer_cases.json'), JSON.stringify(fixture));
    const r = roundtrip('conformance', bad, '--vocab', VOCAB);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(new RegExp(`bert\\.ids .*FAIL \\(cases ${fixture.cases[0].id} differ\\)`));
  });

  test('tokenize prints ids and tokens', () => {
    const r = roundtrip('tokenize', '--tokenizer', path.join(VOCAB, 'clip'), '--json', 'a photo of a cat');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out);
    expect(report.kind).toBe('clip');
    expect(report.texts[0].ids).toEqual([320, 1125, 539, 320, 2368]);
    expect(report.texts[0].tokens[4]).toBe('cat</w>');
  });

  test('weights inspect lists tensors and names a malformed file', () => {
    const r = roundtrip('weights', 'inspect', path.join(REFERENCE, 'vit-dino', 'model.safetensors'));
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/embeddings\.cls_token/);
    const broken = path.join(tmp, 'broken.safetensors');
    fs.writeFileSync(broken, Buffer.from([255, 255, 0, 0, 0, 0, 0, 0, 123]));
    const b = roundtrip('weights', 'inspect', broken);
    expect(b.code).not.toBe(0);
    expect(b.err).toContain(broken);
  });

  test('model options take pulled aliases and say which pull to run when one is missing', () => {
    const home = path.join(tmp, 'home');
    const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'roundtrip.js'), 'caption', 'x.png', '--model', 'blip-base'], {
      encoding: 'utf8',
      env: { ...process.env, ROUNDTRIP_HOME: home, ROUNDTRIP_QUIET: '1' },
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('roundtrip weights pull blip-base');
    expect(r.stderr).toContain(path.join(home, 'models', 'blip-base'));
    // The same name once pulled: a complete folder with its pull manifest (here, the shipped world BLIP).
    const dir = path.join(home, 'models', 'blip-base');
    fs.cpSync(path.join(ROOT, 'weights', 'world-blip'), dir, { recursive: true });
    const files = fs.readdirSync(dir).map((f) => ({ path: f, size: fs.statSync(path.join(dir, f)).size }));
    fs.writeFileSync(path.join(dir, '.roundtrip-pull.json'), JSON.stringify({ format: 1, name: 'blip-base', source: 'hub', repo: 'Salesforce/blip-image-captioning-base', complete: true, files }));
    const image = path.join(tmp, 'red.png');
    fs.writeFileSync(image, Buffer.from('89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c49444154789c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082', 'hex'));
    const ok = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'roundtrip.js'), 'caption', image, '--model', 'blip-base', '--json'], {
      encoding: 'utf8',
      env: { ...process.env, ROUNDTRIP_HOME: home, ROUNDTRIP_QUIET: '1' },
    });
    expect(ok.status).toBe(0);
    expect(JSON.parse(ok.stdout)[0].captions[0]).toMatch(/\w/);
  });

  test('bad commands and flags are clear errors', () => {
    const r = roundtrip('frobnicate');
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/Unknown argument|Did you mean|frobnicate/);
    const g = roundtrip('generate', 'a cat', '--model', path.join(tmp, 'none'), '--out', tmp);
    expect(g.code).not.toBe(0);
    expect(g.err).toMatch(/none/);
  });

  test('flag values are checked once, by the API function the command calls, and errors name the flag', () => {
    const model = path.join(tmp, 'flag-model');
    fs.mkdirSync(model, { recursive: true });
    fs.writeFileSync(path.join(model, 'config.json'), '{}');
    const img = path.join(tmp, 'none.png');
    const cases: [string[], RegExp][] = [
      // models/decoding nativeDecodingOptions, through models/blip checkBlipCaptionOptions
      [['caption', img, '--model', model, '--strategy', 'top-p', '--top-p', '2'], /--top-p: expected a finite number > 0 and <= 1, got number 2/],
      [['caption', img, '--model', model, '--k', '3', '--num-beams', '2'], /--k: expected at most --num-beams \(2\), got number 3/],
      [['caption', img, '--model', model, '--k', '2000'], /--k: 2000 is over the limit of 1000/],
      // runtime/model checkFrozenDtype
      [['caption', img, '--model', model, '--precision', 'fp64'], /--precision: expected one of "fp32", "bf16", "fp16", got "fp64"/],
      // paper/rerank/run clipVariantOf, sdSettings
      [['score', '--image', img, '--caption', 'a cat', '--sd', model, '--clip-variant', 'both'], /--clip-variant: expected one of "projected", "pooled", got "both"/],
    ];
    for (const [args, message] of cases) {
      const r = roundtrip(...args);
      expect({ args, code: r.code }).toEqual({ args, code: 1 });
      expect(r.err).toMatch(message);
    }
  });
});
