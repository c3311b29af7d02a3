import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { createProgress, formatAmount, formatDuration } from '../lib/progress';
import {
  HubError,
  listLocalModels,
  formatModelList,
  MANIFEST_NAME,
  MODEL_ALIASES,
  pullModel,
  readManifest,
  resolveModel,
  selectRepoFiles,
  type ModelAlias,
  type TreeFile,
} from '../lib/weights/hub';
import { runList, runPull } from '../lib/cli/commands/weights-hub';
import { closedPortUrl, FakeHub, fakeBytes, gitBlobOid, sha256Hex, type FakeFile } from './support/fake-hub';

const BLIP = MODEL_ALIASES['blip-base'] as Extract<ModelAlias, { kind: 'hub' }>;
const SD = MODEL_ALIASES['sd-v1-4'] as Extract<ModelAlias, { kind: 'hub' }>;

function blipFiles(): FakeFile[] {
  return [
    { path: '.gitattributes', content: Buffer.from('*.safetensors filter=lfs\n') },
    { path: 'README.md', content: Buffer.from('# BLIP\n') },
    { path: 'config.json', content: Buffer.from(JSON.stringify({ model_type: 'blip', hidden_size: 8 })) },
    { path: 'preprocessor_config.json', content: Buffer.from('{"image_size": 384}') },
    { path: 'special_tokens_map.json', content: Buffer.from('{}') },
    { path: 'tokenizer.json', content: Buffer.from(JSON.stringify({ version: '1.0', vocab: fakeBytes(64, 3).toString('hex') })) },
    { path: 'vocab.txt', content: Buffer.from('[PAD]\n[UNK]\nhello\n') },
    { path: 'model.safetensors', content: fakeBytes(300_000, 1), lfs: true },
    { path: 'pytorch_model.bin', content: fakeBytes(1000, 2), lfs: true },
    { path: 'tf_model.h5', content: fakeBytes(500, 4), lfs: true },
  ];
}
const BLIP_WANTED = ['config.json', 'model.safetensors', 'preprocessor_config.json', 'special_tokens_map.json', 'tokenizer.json', 'vocab.txt'];

let hub: FakeHub;
let tmp: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  process.env.ROUNDTRIP_QUIET = '1';
  hub = await FakeHub.start();
});
afterAll(async () => {
  await hub.close();
});
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'roundtrip-hub-'));
  env = { HOME: tmp, ROUNDTRIP_HOME: path.join(tmp, 'rt'), HF_ENDPOINT: hub.hubUrl, ROUNDTRIP_QUIET: '1' };
  hub.requests.length = 0;
  hub.cutOnce.clear();
  hub.stallOnce.clear();
  hub.corrupt.clear();
  hub.addRepo({ id: BLIP.repo, files: blipFiles() });
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

const fast = { retryDelayMs: 0, stallTimeoutMs: 10_000 };
const modelDir = (name: string) => path.join(tmp, 'rt', 'models', name);

function listDir(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, prefix: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name), prefix + e.name + '/');
      else out.push(prefix + e.name);
    }
  };
  walk(dir, '');
  return out.sort();
}

async function expectHubError(promise: Promise<unknown>, code: string): Promise<HubError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(HubError);
    expect((err as HubError).code).toBe(code);
    return err as HubError;
  }
  throw new Error(`expected a HubError(${code}), but the call succeeded`);
}

describe('weights pull', () => {
  test('full download: selected files land verified, other frameworks are skipped, manifest records the commit', async () => {
    const result = await pullModel('blip-base', { env, ...fast });
    const dir = modelDir('blip-base');
    expect(result.dir).toBe(dir);
    expect(result.upToDate).toBe(false);
    expect(result.commit).toBe(hub.commitOf(BLIP.repo));
    expect(listDir(dir)).toEqual([MANIFEST_NAME, ...BLIP_WANTED].sort());
    for (const file of blipFiles().filter((f) => BLIP_WANTED.includes(f.path))) {
      expect(fs.readFileSync(path.join(dir, file.path)).equals(file.content)).toBe(true);
    }
    const manifest = readManifest(dir)!;
    expect(manifest.complete).toBe(true);
    expect(manifest.repo).toBe(BLIP.repo);
    expect(manifest.revision).toBe('main');
    expect(manifest.commit).toBe(hub.commitOf(BLIP.repo));
    const weights = manifest.files.find((f) => f.path === 'model.safetensors')!;
    expect(weights.sha256).toBe(sha256Hex(blipFiles().find((f) => f.path === 'model.safetensors')!.content));
    expect(manifest.files.find((f) => f.path === 'config.json')!.gitOid).toBe(gitBlobOid(blipFiles()[2].content));
    // LFS bytes came from the CDN through the redirect.
    expect(hub.requests.some((r) => r.server === 'cdn' && r.path.startsWith('/blobs/'))).toBe(true);
  });

  test('a repo id that an alias stands for lands in the alias folder', async () => {
    const result = await pullModel(BLIP.repo, { env, ...fast });
    expect(result.name).toBe('blip-base');
    expect(result.dir).toBe(modelDir('blip-base'));
  });

  test('second pull of the same revision fetches no file contents', async () => {
    await pullModel('blip-base', { env, ...fast });
    hub.requests.length = 0;
    const again = await pullModel('blip-base', { env, ...fast });
    expect(again.upToDate).toBe(true);
    expect(again.downloaded).toEqual([]);
    expect(hub.contentRequests()).toEqual([]);
    // Pinned to a commit, it does not even list the tree.
    const commit = hub.commitOf(BLIP.repo);
    await pullModel('blip-base', { env, ...fast, revision: commit });
    hub.requests.length = 0;
    const pinned = await pullModel('blip-base', { env, ...fast, revision: commit });
    expect(pinned.upToDate).toBe(true);
    expect(hub.requests).toEqual([]);
  });

  test('a file dropped upstream is removed on the next pull; files the pull did not make are kept', async () => {
    hub.addRepo({ id: 'org/changing', files: blipFiles() });
    const first = await pullModel('org/changing', { env, ...fast });
    fs.writeFileSync(path.join(first.dir, 'my-notes.txt'), 'mine');
    hub.addRepo({ id: 'org/changing', files: blipFiles().filter((f) => f.path !== 'vocab.txt') });
    hub.requests.length = 0;
    const second = await pullModel('org/changing', { env, ...fast });
    expect(second.upToDate).toBe(true);
    expect(hub.contentRequests()).toEqual([]);
    expect(second.files.map((f) => f.path)).not.toContain('vocab.txt');
    expect(fs.existsSync(path.join(first.dir, 'vocab.txt'))).toBe(false);
    expect(fs.existsSync(path.join(first.dir, 'my-notes.txt'))).toBe(true);
    expect(readManifest(first.dir)!.files.map((f) => f.path)).not.toContain('vocab.txt');
  });

  test('interrupted download keeps <file>.incomplete, never the final name, and the next run resumes with Range', async () => {
    const key = `${BLIP.repo}/model.safetensors`;
    const content = blipFiles().find((f) => f.path === 'model.safetensors')!.content;
    hub.cutOnce.set(key, 100_000);
    const err = await expectHubError(pullModel('blip-base', { env, ...fast, attempts: 1 }), 'interrupted');
    expect(err.message).toContain('model.safetensors');
    expect(err.message).toContain('run the same command again to resume');
    const dir = modelDir('blip-base');
    expect(fs.existsSync(path.join(dir, 'model.safetensors'))).toBe(false);
    const partialSize = fs.statSync(path.join(dir, 'model.safetensors.incomplete')).size;
    expect(partialSize).toBeGreaterThan(0);
    expect(partialSize).toBeLessThanOrEqual(100_000);
    expect(readManifest(dir)?.complete).toBe(false);

    hub.requests.length = 0;
    const result = await pullModel('blip-base', { env, ...fast, attempts: 1 });
    const blobGets = hub.requests.filter((r) => r.server === 'cdn');
    expect(blobGets).toHaveLength(1);
    expect(blobGets[0].range).toBe(`bytes=${partialSize}-`);
    // config.json landed (and was recorded) before the interruption: only the rest is fetched again.
    expect(hub.requests.some((r) => r.path.endsWith('/config.json'))).toBe(false);
    const laterSmallFiles = blipFiles()
      .filter((f) => BLIP_WANTED.includes(f.path) && !f.lfs && f.path > 'model.safetensors')
      .reduce((sum, f) => sum + f.content.length, 0);
    expect(result.downloaded[0]).toBe('model.safetensors');
    expect(result.bytesFetched).toBe(content.length - partialSize + laterSmallFiles);
    expect(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(content)).toBe(true);
    expect(fs.existsSync(path.join(dir, 'model.safetensors.incomplete'))).toBe(false);
    expect(readManifest(dir)?.complete).toBe(true);
  });

  test('an interruption is retried within the same run, resuming from the partial file', async () => {
    const content = blipFiles().find((f) => f.path === 'model.safetensors')!.content;
    hub.cutOnce.set(`${BLIP.repo}/model.safetensors`, 150_000);
    const result = await pullModel('blip-base', { env, ...fast, attempts: 3 });
    const blobGets = hub.requests.filter((r) => r.server === 'cdn');
    expect(blobGets).toHaveLength(2);
    expect(blobGets[0].range).toBeUndefined();
    expect(blobGets[1].range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(fs.readFileSync(path.join(result.dir, 'model.safetensors')).equals(content)).toBe(true);
  });

  test('a stalled connection is aborted after the stall timeout and resumed on the next try', async () => {
    const content = blipFiles().find((f) => f.path === 'model.safetensors')!.content;
    hub.stallOnce.set(`${BLIP.repo}/model.safetensors`, 50_000);
    const started = Date.now();
    const result = await pullModel('blip-base', { env, retryDelayMs: 0, stallTimeoutMs: 300, attempts: 2 });
    expect(Date.now() - started).toBeLessThan(5000);
    const blobGets = hub.requests.filter((r) => r.server === 'cdn');
    expect(blobGets).toHaveLength(2);
    expect(blobGets[1].range).toMatch(/^bytes=[1-9]\d*-$/);
    expect(fs.readFileSync(path.join(result.dir, 'model.safetensors')).equals(content)).toBe(true);

    fs.rmSync(result.dir, { recursive: true });
    hub.stallOnce.set(`${BLIP.repo}/model.safetensors`, 50_000);
    const err = await expectHubError(pullModel('blip-base', { env, retryDelayMs: 0, stallTimeoutMs: 300, attempts: 1 }), 'interrupted');
    expect(err.message).toContain('stalled');
  });

  test('corrupted bytes are detected: the file does not land and the error names it', async () => {
    hub.corrupt.add(`${BLIP.repo}/model.safetensors`);
    const err = await expectHubError(pullModel('blip-base', { env, ...fast }), 'corrupt');
    expect(err.message).toContain('blip-base/model.safetensors');
    expect(err.message).toContain('sha256');
    const dir = modelDir('blip-base');
    expect(fs.existsSync(path.join(dir, 'model.safetensors'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'model.safetensors.incomplete'))).toBe(false);
    expect(readManifest(dir)?.complete).not.toBe(true);
  });

  test('a corrupted small (non-LFS) file is caught by its git blob id', async () => {
    hub.corrupt.add(`${BLIP.repo}/tokenizer.json`);
    const err = await expectHubError(pullModel('blip-base', { env, ...fast }), 'corrupt');
    expect(err.message).toContain('tokenizer.json');
    expect(fs.existsSync(path.join(modelDir('blip-base'), 'tokenizer.json'))).toBe(false);
  });

  test('gated repo: clear error without a token; works with HF_TOKEN or --token-env; token never sent to the CDN', async () => {
    hub.addRepo({ id: 'gated-org/gated-model', files: blipFiles(), gatedToken: 'hf_secret' });
    const err = await expectHubError(pullModel('gated-org/gated-model', { env, ...fast }), 'auth');
    expect(err.message).toContain('HF_TOKEN');
    expect(err.message).toContain('licence');
    expect(err.message).toContain(`${hub.hubUrl}/gated-org/gated-model`);

    const wrong = await expectHubError(pullModel('gated-org/gated-model', { env: { ...env, HF_TOKEN: 'hf_wrong' }, ...fast }), 'auth');
    expect(wrong.message).toContain('refused the token from HF_TOKEN');
    expect(wrong.message).not.toContain('hf_wrong');

    hub.requests.length = 0;
    const result = await pullModel('gated-org/gated-model', { env: { ...env, HF_TOKEN: 'hf_secret' }, ...fast });
    expect(result.dir).toBe(modelDir('gated-org--gated-model'));
    expect(fs.existsSync(path.join(result.dir, 'model.safetensors'))).toBe(true);
    expect(hub.requests.filter((r) => r.server === 'hub' && r.path.includes('/resolve/')).every((r) => r.authorization === 'Bearer hf_secret')).toBe(true);
    expect(hub.requests.filter((r) => r.server === 'cdn').every((r) => r.authorization === undefined)).toBe(true);

    const out = path.join(tmp, 'elsewhere');
    await pullModel('gated-org/gated-model', { env: { ...env, MY_TOKEN: 'hf_secret' }, tokenEnv: 'MY_TOKEN', out, ...fast });
    expect(fs.existsSync(path.join(out, 'model.safetensors'))).toBe(true);
    await expect(pullModel('gated-org/gated-model', { env, tokenEnv: 'UNSET_VAR', ...fast })).rejects.toThrow(/--token-env: expected environment variable UNSET_VAR/);
  });

  test('offline: a clear error naming the alias and the folder to provide instead', async () => {
    const offlineEnv = { ...env, HF_ENDPOINT: await closedPortUrl() };
    const err = await expectHubError(pullModel('blip-base', { env: offlineEnv, ...fast }), 'offline');
    expect(err.message).toContain('"blip-base"');
    expect(err.message).toContain(modelDir('blip-base'));
    expect(err.message).toContain('pass the folder');
    expect(err.message).toContain('ECONNREFUSED');
    // With a complete copy present, pulling offline keeps it.
    await pullModel('blip-base', { env, ...fast });
    const kept = await pullModel('blip-base', { env: offlineEnv, ...fast });
    expect(kept.upToDate).toBe(true);
    expect(kept.notes.join(' ')).toContain('could not reach');
  });

  test('a listing with a path that escapes the model folder is refused', async () => {
    hub.addRepo({ id: 'evil/repo', files: [{ path: 'config.json', content: Buffer.from('{}') }, { path: '../escape.safetensors', content: Buffer.from('x'), lfs: true }] });
    const err = await expectHubError(pullModel('evil/repo', { env, ...fast }), 'http');
    expect(err.message).toContain('unsafe path "../escape.safetensors"');
    expect(fs.existsSync(path.join(tmp, 'rt', 'models', 'escape.safetensors'))).toBe(false);
  });

  test('unknown revision and unknown name give clear errors', async () => {
    const err = await expectHubError(pullModel('blip-base', { env, ...fast, revision: 'no-such-branch' }), 'not-found');
    expect(err.message).toContain('no-such-branch');
    await expect(pullModel('not a model', { env })).rejects.toThrow(/model name: expected one of the aliases blip-base/);
  });

  test('sd-v1-4 takes only the pipeline files, safetensors over .bin, fp16 variant on request', async () => {
    const files: FakeFile[] = [
      { path: 'model_index.json', content: Buffer.from('{"_class_name":"StableDiffusionPipeline"}') },
      { path: 'sd-v1-4.ckpt', content: fakeBytes(2000, 10), lfs: true },
      { path: 'scheduler/scheduler_config.json', content: Buffer.from('{}') },
      { path: 'safety_checker/config.json', content: Buffer.from('{}') },
      { path: 'safety_checker/model.safetensors', content: fakeBytes(100, 11), lfs: true },
      { path: 'feature_extractor/preprocessor_config.json', content: Buffer.from('{}') },
      { path: 'tokenizer/merges.txt', content: Buffer.from('a b\n') },
      { path: 'tokenizer/vocab.json', content: Buffer.from('{"a":0}') },
      { path: 'tokenizer/tokenizer_config.json', content: Buffer.from('{}') },
      { path: 'tokenizer/special_tokens_map.json', content: Buffer.from('{}') },
    ];
    for (const [component, weight] of [['text_encoder', 'model'], ['unet', 'diffusion_pytorch_model'], ['vae', 'diffusion_pytorch_model']]) {
      files.push({ path: `${component}/config.json`, content: Buffer.from(`{"c":"${component}"}`) });
      files.push({ path: `${component}/${weight}.safetensors`, content: fakeBytes(400, component.length), lfs: true });
      files.push({ path: `${component}/${weight}.fp16.safetensors`, content: fakeBytes(200, component.length + 1), lfs: true });
      files.push({ path: `${component}/${weight}.bin`, content: fakeBytes(400, component.length + 2), lfs: true });
      files.push({ path: `${component}/${weight}.non_ema.bin`, content: fakeBytes(400, component.length + 3), lfs: true });
    }
    hub.addRepo({ id: SD.repo, files });
    const base = await pullModel('sd-v1-4', { env, ...fast });
    expect(base.files.map((f) => f.path).sort()).toEqual(
      [
        'model_index.json', 'scheduler/scheduler_config.json',
        'text_encoder/config.json', 'text_encoder/model.safetensors',
        'tokenizer/merges.txt', 'tokenizer/special_tokens_map.json', 'tokenizer/tokenizer_config.json', 'tokenizer/vocab.json',
        'unet/config.json', 'unet/diffusion_pytorch_model.safetensors',
        'vae/config.json', 'vae/diffusion_pytorch_model.safetensors',
      ].sort(),
    );
    const fp16 = await pullModel('sd-v1-4', { env, ...fast, variant: 'fp16', out: path.join(tmp, 'sd16') });
    const weights = fp16.files.map((f) => f.path).filter((p) => p.endsWith('.safetensors')).sort();
    expect(weights).toEqual(['text_encoder/model.fp16.safetensors', 'unet/diffusion_pytorch_model.fp16.safetensors', 'vae/diffusion_pytorch_model.fp16.safetensors']);
  });

  test('a plain URL model is downloaded, checked against its sha256 prefix and converted through the given converter', async () => {
    const content = fakeBytes(50_000, 42);
    const url = hub.addUrlFile('weights-test-x.pth', content);
    const good: ModelAlias = {
      kind: 'url', name: 'inception-test', url, fileName: 'weights-test-x.pth', sha256Prefix: sha256Hex(content).slice(0, 8),
      convertedName: 'weights-test.safetensors', description: 'test', usedBy: ['eval images'],
    };
    const calls: string[][] = [];
    const convert = async (input: string, output: string) => {
      calls.push([input, output]);
      fs.writeFileSync(output, Buffer.concat([Buffer.from('converted:'), fs.readFileSync(input).subarray(0, 10)]));
    };
    const aliases = { ...MODEL_ALIASES, 'inception-test': good };
    const result = await pullModel('inception-test', { env, aliases, convert, ...fast });
    const dir = modelDir('inception-test');
    expect(fs.readFileSync(path.join(dir, 'weights-test-x.pth')).equals(content)).toBe(true);
    expect(result.converted).toBe('weights-test.safetensors');
    expect(fs.readFileSync(path.join(dir, 'weights-test.safetensors')).subarray(0, 10).toString()).toBe('converted:');
    expect(calls).toHaveLength(1);
    const resolved = resolveModel('inception-test', { env, aliases });
    expect(resolved.file).toBe(path.join(dir, 'weights-test.safetensors'));
    hub.requests.length = 0;
    expect((await pullModel('inception-test', { env, aliases, convert, ...fast })).upToDate).toBe(true);
    expect(hub.requests).toEqual([]);
    expect(calls).toHaveLength(1);
    await expect(pullModel('inception-test', { env, aliases, revision: 'v1' })).rejects.toThrow(/--revision/);

    const bad: ModelAlias = { ...good, name: 'inception-bad', sha256Prefix: '00000000' };
    const err = await expectHubError(pullModel('inception-bad', { env, aliases: { 'inception-bad': bad }, ...fast }), 'corrupt');
    expect(err.message).toContain('inception-bad/weights-test-x.pth');
    expect(fs.existsSync(path.join(modelDir('inception-bad'), 'weights-test-x.pth'))).toBe(false);
  });

  test('the inception-fid alias points at the torch-fidelity release with its sha256 prefix', () => {
    const alias = MODEL_ALIASES['inception-fid'];
    expect(alias.kind).toBe('url');
    if (alias.kind === 'url') {
      expect(alias.url).toBe('https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth');
      expect(alias.sha256Prefix).toBe('6726825d');
    }
  });

  test('runPull prints a summary per model; --out with several names makes one subfolder each', async () => {
    hub.addRepo({ id: 'org/other', files: blipFiles().slice(2, 8) });
    const lines: string[] = [];
    const out = path.join(tmp, 'out');
    const results = await runPull(['blip-base', 'org/other'], { env, out, write: (l) => lines.push(l), ...fast });
    expect(results.map((r) => r.dir)).toEqual([path.join(out, 'blip-base'), path.join(out, 'org--other')]);
    expect(lines[0]).toMatch(/^blip-base: fetched 6 of 6 files/);
    expect(lines[1]).toMatch(/^org\/other: fetched/);
    await expect(runPull([], { env })).rejects.toThrow(/NAME: expected at least one model name/);
  });
});

describe('weights list', () => {
  test('shows pulled models with size, status and the commands that use them', async () => {
    expect(listLocalModels({ env })).toEqual([]);
    await pullModel('blip-base', { env, ...fast });
    hub.addRepo({ id: 'org/partial', files: blipFiles() });
    hub.cutOnce.set('org/partial/model.safetensors', 1000);
    await expectHubError(pullModel('org/partial', { env, ...fast, attempts: 1 }), 'interrupted');

    const models = listLocalModels({ env });
    expect(models.map((m) => m.name)).toEqual(['blip-base', 'org/partial']);
    const blip = models[0];
    expect(blip.status).toBe('complete');
    expect(blip.usedBy).toEqual(['caption', 'rerank', 'finetune']);
    expect(blip.files).toBe(BLIP_WANTED.length);
    const expectedBytes = blipFiles().filter((f) => BLIP_WANTED.includes(f.path)).reduce((s, f) => s + f.content.length, 0);
    expect(blip.bytes).toBeGreaterThan(expectedBytes); // plus the manifest
    expect(models[1].status).toBe('partial');
    expect(models[1].incomplete).toBe(1);

    const text = formatModelList(models, { env });
    expect(text).toContain(path.join(tmp, 'rt', 'models'));
    expect(text).toMatch(/blip-base\s+\d[\d.]* kB\s+complete/);
    expect(text).toContain('caption, rerank, finetune');
    expect(text).toMatch(/not pulled: blip-large, sd-v1-4/);
    const printed: string[] = [];
    runList({ env, json: true, write: (t) => printed.push(t) });
    expect(JSON.parse(printed[0])[0]).toMatchObject({ name: 'blip-base', alias: 'blip-base', status: 'complete' });
  });
});

describe('resolveModel', () => {
  test('a folder is taken as is', () => {
    const folder = path.join(tmp, 'my-blip');
    fs.mkdirSync(folder);
    expect(resolveModel(folder, { env })).toEqual({ kind: 'path', path: folder });
    expect(() => resolveModel(path.join(tmp, 'missing-folder'), { env })).toThrow(/folder .*missing-folder does not exist/);
  });

  test('a pulled alias resolves to its folder, also by repo id', async () => {
    await pullModel('blip-base', { env, ...fast });
    const resolved = resolveModel('blip-base', { env });
    expect(resolved.kind).toBe('pulled');
    expect(resolved.path).toBe(modelDir('blip-base'));
    expect(resolved.repo).toBe(BLIP.repo);
    expect(resolveModel(BLIP.repo, { env }).path).toBe(modelDir('blip-base'));
  });

  test('a missing alias says which pull to run and that a folder works offline', () => {
    let error: unknown;
    try {
      resolveModel('clip-vit-b32', { env });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(HubError);
    expect((error as HubError).code).toBe('missing');
    expect((error as Error).message).toContain('roundtrip weights pull clip-vit-b32');
    expect((error as Error).message).toContain('pass the folder');
    expect(() => resolveModel('no such thing', { env })).toThrow(/model: expected an existing folder, a pulled alias/);
  });

  test('a half-finished pull does not count as present', async () => {
    hub.cutOnce.set(`${BLIP.repo}/model.safetensors`, 1000);
    await expectHubError(pullModel('blip-base', { env, ...fast, attempts: 1 }), 'interrupted');
    expect(() => resolveModel('blip-base', { env })).toThrow(/did not finish/);
  });

  test('falls back to a snapshot in the Python hub cache (HF_HUB_CACHE)', () => {
    const cache = path.join(tmp, 'hf-cache');
    const snapshot = path.join(cache, 'models--openai--clip-vit-base-patch32', 'snapshots', 'abc123');
    fs.mkdirSync(snapshot, { recursive: true });
    fs.writeFileSync(path.join(snapshot, 'config.json'), '{}');
    fs.mkdirSync(path.join(cache, 'models--openai--clip-vit-base-patch32', 'refs'));
    fs.writeFileSync(path.join(cache, 'models--openai--clip-vit-base-patch32', 'refs', 'main'), 'abc123');
    const resolved = resolveModel('clip-vit-b32', { env: { ...env, HF_HUB_CACHE: cache } });
    expect(resolved).toMatchObject({ kind: 'hf-cache', path: snapshot, name: 'clip-vit-b32' });
  });
});

describe('file selection', () => {
  const tree = (paths: string[]): TreeFile[] => paths.map((p) => ({ path: p, size: 1, oid: 'x' }));

  test('sentence-transformers layout: configs and safetensors, no onnx/openvino exports', () => {
    const picked = selectRepoFiles(
      tree([
        '1_Pooling/config.json', 'README.md', 'config.json', 'config_sentence_transformers.json', 'model.safetensors', 'modules.json',
        'onnx/model.onnx', 'onnx/config.json', 'openvino/openvino_model.bin', 'openvino/openvino_model.xml', 'pytorch_model.bin',
        'rust_model.ot', 'sentence_bert_config.json', 'tf_model.h5', 'tokenizer.json', 'train_script.py', 'training_args.bin', 'vocab.txt',
      ]),
    ).files.map((f) => f.path);
    expect(picked).toEqual([
      '1_Pooling/config.json', 'config.json', 'config_sentence_transformers.json', 'model.safetensors', 'modules.json',
      'sentence_bert_config.json', 'tokenizer.json', 'vocab.txt',
    ]);
  });

  test('falls back to pytorch_model.bin (with its index) when a folder has no safetensors; notes a missing variant', () => {
    const selection = selectRepoFiles(
      tree(['config.json', 'pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin', 'pytorch_model.bin.index.json', 'flax_model.msgpack']),
      { variant: 'fp16' },
    );
    expect(selection.files.map((f) => f.path)).toEqual(['config.json', 'pytorch_model-00001-of-00002.bin', 'pytorch_model-00002-of-00002.bin', 'pytorch_model.bin.index.json']);
    expect(selection.notes.join(' ')).toContain('no fp16 variant');
  });
});

describe('progress', () => {
  function sink(isTTY: boolean) {
    const chunks: string[] = [];
    return { stream: { isTTY, columns: 120, write: (s: string) => chunks.push(s) }, chunks };
  }

  test('TTY: one redrawn line with bar, percentage, smoothed rate and ETA; throttled', () => {
    let t = 0;
    const { stream, chunks } = sink(true);
    const p = createProgress({ label: 'model.safetensors', total: 10_000_000, unit: 'B', stream, quiet: false, now: () => t });
    for (let i = 0; i < 45; i++) {
      t += 10;
      p.tick(100_000); // 10 MB/s
    }
    expect(chunks.length).toBeLessThan(10); // 45 ticks over 450 ms, at most one redraw per 100 ms
    const last = chunks[chunks.length - 1];
    expect(last.startsWith('\r')).toBe(true);
    expect(last).toMatch(/^\rmodel\.safetensors \[#{8}\.{12}\] 4\d% 4\.\d0 MB\/10\.0 MB 10\.0 MB\/s ETA 0:01\x1b\[K$/);
    p.done();
    const final = chunks[chunks.length - 1];
    // done() draws the real final state (not a fake 100%) and ends the line.
    expect(final).toBe('\rmodel.safetensors [#########...........] 45% 4.50 MB/10.0 MB in 0:00 (10.0 MB/s)\x1b[K\n');
  });

  test('not a TTY: a plain line about every 10% and a closing line; quiet prints nothing', () => {
    let t = 0;
    const { stream, chunks } = sink(false);
    const p = createProgress({ label: 'sampling', total: 100, unit: 'step', stream, quiet: false, now: () => t });
    for (let i = 0; i < 100; i++) {
      t += 50;
      p.tick();
    }
    p.done();
    expect(chunks.length).toBeGreaterThanOrEqual(9);
    expect(chunks.length).toBeLessThanOrEqual(11);
    expect(chunks.every((c) => c.endsWith('\n') && !c.includes('\r'))).toBe(true);
    expect(chunks[0]).toMatch(/^sampling \[##\.+\] 10% 10\/100 step 20\.0 step\/s ETA 0:05\n$/);
    expect(chunks[chunks.length - 1]).toMatch(/^sampling \[#{20}\] 100% 100\/100 step in 0:05 \(20\.0 step\/s\)\n$/);

    const quiet = sink(false);
    const q = createProgress({ label: 'x', total: 10, stream: quiet.stream, quiet: true });
    q.update(5);
    q.done();
    expect(quiet.chunks).toEqual([]);
    const fromEnv = sink(false);
    const e = createProgress({ label: 'x', total: 10, stream: fromEnv.stream }); // ROUNDTRIP_QUIET=1 set for this suite
    e.update(10);
    e.done();
    expect(fromEnv.chunks).toEqual([]);
  });

  test('formatting helpers and argument checks', () => {
    expect(formatAmount(12_345_678, 'B')).toBe('12.3 MB');
    expect(formatAmount(999, 'B')).toBe('999 B');
    expect(formatDuration(42)).toBe('0:42');
    expect(formatDuration(3725)).toBe('1:02:05');
    expect(() => createProgress({ label: 'x', total: -1 })).toThrow(/progress total: expected a finite number >= 0, got number -1/);
    const p = createProgress({ label: 'x', quiet: true });
    expect(() => p.tick(Number.NaN)).toThrow(/progress tick/);
  });
});
