import { createHash } from 'crypto';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { RoundtripError } from '../lib/errors';
import { Rng, decodeImage } from '../lib/image';
import { loadBertTokenizer, loadClipTokenizer } from '../lib/tokenizers';
import {
  BACKGROUNDS,
  COLORS,
  CAPTIONS_PER_IMAGE,
  POSITIONS,
  RELATIONS,
  SHAPES,
  SPLITS,
  Scene,
  WORLD_FILES,
  WORLD_GENERATOR_VERSION,
  attributeAccuracy,
  canonicalCaption,
  canonicalDescription,
  captionScene,
  captionTokens,
  captionWords,
  generateScene,
  generateWorld,
  heldOutPairs,
  imageIdFromPath,
  isHeldOut,
  pairPools,
  parseCaption,
  readWorld,
  renderScene,
  sceneFromImage,
  scoreDescription,
  writeWorld,
} from '../lib/world';
import { DATA, VOCAB } from './support/paths';

const SEED = 1234;

function scenesOf(seed: number, split: (typeof SPLITS)[number], count: number): Scene[] {
  const pools = pairPools(seed);
  return Array.from({ length: count }, (_, i) => generateScene(seed, split, i, pools));
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

async function tempDir(): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), 'roundtrip-world-'));
}

async function readJson(file: string): Promise<unknown> {
  return JSON.parse(await fs.readFile(file, 'utf8'));
}

async function hashTree(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (sub: string): Promise<void> => {
    for (const entry of await fs.readdir(path.join(dir, sub), { withFileTypes: true })) {
      const rel = path.join(sub, entry.name);
      if (entry.isDirectory()) await walk(rel);
      else out.set(rel, sha256(await fs.readFile(path.join(dir, rel))));
    }
  };
  await walk('');
  return out;
}

const quiet = { quiet: true };

describe('scenes and captions', () => {
  test('the same seed gives the same scenes, pixels and captions; another seed differs', () => {
    const a = scenesOf(SEED, 'train', 50);
    const b = scenesOf(SEED, 'train', 50);
    const c = scenesOf(SEED + 1, 'train', 50);
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
    for (let i = 0; i < a.length; i++) {
      expect(sha256(renderScene(b[i]).data)).toBe(sha256(renderScene(a[i]).data));
      expect(captionScene(b[i], SEED)).toEqual(captionScene(a[i], SEED));
    }
    const differentPixels = a.filter((scene, i) => sha256(renderScene(scene).data) !== sha256(renderScene(c[i]).data)).length;
    expect(differentPixels).toBeGreaterThan(45);
    // Scene i does not depend on how many scenes are drawn, nor on the other splits.
    expect(generateScene(SEED, 'train', 37)).toEqual(a[37]);
    expect(generateScene(SEED, 'val', 3)).not.toEqual(generateScene(SEED, 'test', 3));
  });

  test('scenes cover the vocabulary and keep objects apart with an unambiguous relation', () => {
    const scenes = [...scenesOf(SEED, 'train', 600), ...scenesOf(SEED, 'test', 400)];
    const seen = { color: new Set<string>(), shape: new Set<string>(), background: new Set<string>(), relation: new Set<string>(), position: new Set<string>(), size: new Set<string>() };
    let twoObjects = 0;
    for (const scene of scenes) {
      expect(scene.objects.length === 1 || scene.objects.length === 2).toBe(true);
      seen.background.add(scene.background);
      for (const o of scene.objects) {
        seen.color.add(o.color);
        seen.shape.add(o.shape);
        seen.size.add(o.size);
        // inside the image, with a margin
        expect(o.x - o.radius).toBeGreaterThan(0);
        expect(o.x + o.radius).toBeLessThan(1);
        expect(o.y - o.radius).toBeGreaterThan(0);
        expect(o.y + o.radius).toBeLessThan(1);
      }
      if (scene.objects.length === 2) {
        twoObjects++;
        const [a, b] = scene.objects;
        expect(a.color === b.color && a.shape === b.shape).toBe(false);
        seen.relation.add(scene.relation!);
        const horizontal = scene.relation === 'left' || scene.relation === 'right';
        const along = horizontal ? b.x - a.x : b.y - a.y;
        const across = horizontal ? b.y - a.y : b.x - a.x;
        // boxes separated along the relation's axis, and the relation dominates the offset
        expect(Math.abs(along)).toBeGreaterThan(a.radius + b.radius);
        expect(Math.abs(across)).toBeLessThan(0.45 * Math.abs(along));
        expect(Math.sign(along)).toBe(scene.relation === 'left' || scene.relation === 'above' ? 1 : -1);
      } else {
        seen.position.add(scene.position!);
      }
    }
    expect(twoObjects).toBeGreaterThan(0.45 * scenes.length);
    expect(twoObjects).toBeLessThan(0.75 * scenes.length);
    expect([...seen.color].sort()).toEqual([...COLORS].sort());
    expect([...seen.shape].sort()).toEqual([...SHAPES].sort());
    expect([...seen.background].sort()).toEqual([...BACKGROUNDS].sort());
    expect([...seen.relation].sort()).toEqual([...RELATIONS].sort());
    expect([...seen.position].sort()).toEqual([...POSITIONS].sort());
    expect(seen.size.size).toBe(2);
  });

  test('each image gets five distinct captions; the first states every attribute', () => {
    for (const scene of scenesOf(SEED, 'val', 200)) {
      const captions = captionScene(scene, SEED);
      expect(captions).toHaveLength(CAPTIONS_PER_IMAGE);
      expect(new Set(captions).size).toBe(CAPTIONS_PER_IMAGE);
      expect(captions[0]).toBe(canonicalCaption(scene));
      for (const caption of captions) expect(caption).toMatch(/^[a-z]+( [a-z]+)*$/);
      const full = parseCaption(captions[0]);
      expect(full.background).toBe(scene.background);
      expect(full.objects.map((o) => o.size)).toEqual(scene.objects.map((o) => o.size));
      if (scene.objects.length === 1) expect(full.position).toBe(scene.position);
      else expect(full.relation).toBe(scene.relation);
    }
  });

  test('every caption (all paraphrases) parses back to the attributes of its scene', () => {
    const scenes = [...scenesOf(SEED, 'train', 400), ...scenesOf(SEED, 'test', 200)];
    let captions = 0;
    let inverted = 0;
    for (const scene of scenes) {
      const expected = canonicalDescription({ objects: scene.objects.map(({ color, shape }) => ({ color, shape })), relation: scene.relation });
      for (const caption of captionScene(scene, SEED)) {
        captions++;
        const parsed = parseCaption(caption);
        const score = scoreDescription(scene, parsed);
        expect({ caption, consistent: score.consistent }).toEqual({ caption, consistent: true });
        // Stricter than the score: the canonical forms agree object by object.
        const canonical = canonicalDescription(parsed);
        expect(canonical.objects.map(({ color, shape }) => ({ color, shape }))).toEqual(expected.objects);
        expect(canonical.relation).toEqual(expected.relation);
        canonical.objects.forEach((o, i) => {
          if (o.size !== undefined) expect(o.size).toBe(canonicalDescription({ objects: scene.objects, relation: scene.relation }).objects[i].size);
        });
        if (parsed.position !== undefined) expect(parsed.position).toBe(scene.position);
        if (parsed.background !== undefined) expect(parsed.background).toBe(scene.background);
        if (scene.relation !== undefined && parsed.relation !== scene.relation) inverted++;
      }
    }
    expect(captions).toBe(scenes.length * CAPTIONS_PER_IMAGE);
    expect(inverted).toBeGreaterThan(0); // paraphrases that state the relation from the other object exist
  });

  test('parseCaption handles paraphrases, free text and punctuation', () => {
    expect(canonicalDescription(parseCaption('a blue square to the right of a small red circle'))).toEqual({
      objects: [
        { color: 'red', shape: 'circle', size: 'small' },
        { color: 'blue', shape: 'square' },
      ],
      relation: 'left',
    });
    expect(parseCaption('There is a LARGE green triangle.')).toEqual({ objects: [{ color: 'green', shape: 'triangle', size: 'large' }] });
    expect(parseCaption('a red circle above a yellow star on a striped background')).toEqual({
      objects: [
        { color: 'red', shape: 'circle' },
        { color: 'yellow', shape: 'star' },
      ],
      relation: 'above',
      background: 'striped',
    });
    expect(parseCaption('a big purple cross is near the bottom')).toEqual({ objects: [{ color: 'purple', shape: 'cross', size: 'large' }], position: 'bottom' });
    expect(parseCaption('a white diamond beneath a black square')).toMatchObject({ relation: 'below' });
    expect(parseCaption('a dog on a sofa')).toEqual({ objects: [] });
    expect(parseCaption('a circle')).toEqual({ objects: [{ shape: 'circle' }] });
    expect(captionTokens("A red-circle, isn't it?")).toEqual(['a', 'red', 'circle', 'isn', 't', 'it']);
    expect(() => parseCaption(42 as unknown as string)).toThrow(RoundtripError);
  });

  test('every caption word is one token for BERT WordPiece and for CLIP BPE', () => {
    const bert = loadBertTokenizer(path.join(VOCAB, 'bert-base-uncased'));
    const clip = loadClipTokenizer(path.join(VOCAB, 'clip'));
    const vocabulary = new Set(captionWords());
    for (const word of vocabulary) {
      expect({ word, pieces: bert.tokenize(word) }).toEqual({ word, pieces: [word] });
      expect({ word, pieces: clip.tokenize(word) }).toEqual({ word, pieces: [`${word}</w>`] });
    }
    for (const scene of scenesOf(SEED, 'train', 100)) {
      for (const caption of captionScene(scene, SEED)) {
        for (const word of caption.split(' ')) expect(vocabulary.has(word)).toBe(true);
        expect(bert.tokenize(caption)).toEqual(caption.split(' '));
      }
    }
  });
});

describe('held-out combinations', () => {
  test('one held-out colour per shape, distinct colours, chosen by the seed', () => {
    const pairs = heldOutPairs(SEED);
    expect(pairs.map((p) => p.shape)).toEqual([...SHAPES]);
    expect(new Set(pairs.map((p) => p.color)).size).toBe(SHAPES.length);
    expect(heldOutPairs(SEED)).toEqual(pairs);
    const others = [1, 2, 3, 4, 5].map((s) => JSON.stringify(heldOutPairs(SEED + s)));
    expect(others.some((o) => o !== JSON.stringify(pairs))).toBe(true);
  });

  test('train never shows a held-out pair; val and test show them in the scenes marked novel', () => {
    const pools = pairPools(SEED);
    const heldOutIn = (scene: Scene): boolean => scene.objects.some((o) => isHeldOut(pools, o));
    for (const scene of scenesOf(SEED, 'train', 3000)) {
      expect(scene.novel).toBe(false);
      expect(heldOutIn(scene)).toBe(false);
    }
    for (const split of ['val', 'test'] as const) {
      const scenes = scenesOf(SEED, split, 600);
      for (const scene of scenes) expect(heldOutIn(scene)).toBe(scene.novel);
      const novel = scenes.filter((s) => s.novel).length;
      expect(novel).toBeGreaterThan(0.35 * scenes.length);
      expect(novel).toBeLessThan(0.65 * scenes.length);
      const shown = new Set(scenes.flatMap((s) => s.objects.filter((o) => isHeldOut(pools, o)).map((o) => `${o.color} ${o.shape}`)));
      expect(shown.size).toBe(pools.heldOut.length);
    }
  });
});

describe('image attribute detector', () => {
  test('recovers colour and shape (>= 0.95) and the other attributes of generated images', () => {
    const scenes = [...scenesOf(SEED, 'test', 250), ...scenesOf(SEED, 'train', 250)];
    const started = Date.now();
    const scores = scenes.map((scene) => scoreDescription(scene, sceneFromImage(renderScene(scene))));
    const seconds = (Date.now() - started) / 1000;
    const accuracy = attributeAccuracy(scores);
    console.log(`detector on ${scenes.length} 64×64 images (${seconds.toFixed(2)} s incl. rendering):`, JSON.stringify(accuracy));
    expect(accuracy.n).toBe(scenes.length);
    expect(accuracy.color).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.shape).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.count).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.size).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.relation).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.position).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.background).toBeGreaterThanOrEqual(0.95);
  });

  test('works at other resolutions', () => {
    for (const size of [48, 128]) {
      const scenes = scenesOf(SEED + size, 'val', 100);
      const accuracy = attributeAccuracy(scenes.map((scene) => scoreDescription(scene, sceneFromImage(renderScene(scene, size)))));
      expect(accuracy.color).toBeGreaterThanOrEqual(0.95);
      expect(accuracy.shape).toBeGreaterThanOrEqual(0.95);
    }
  });

  test('tolerates pixel noise (as in images a model generates)', () => {
    const rng = new Rng(77);
    const scenes = scenesOf(SEED, 'test', 200);
    const accuracy = attributeAccuracy(
      scenes.map((scene) => {
        const image = renderScene(scene);
        for (let k = 0; k < image.data.length; k++) image.data[k] = Math.max(0, Math.min(255, image.data[k] + (rng.nextUint32() % 33) - 16));
        return scoreDescription(scene, sceneFromImage(image));
      }),
    );
    expect(accuracy.color).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.shape).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.relation).toBeGreaterThanOrEqual(0.95);
    expect(accuracy.background).toBeGreaterThanOrEqual(0.95);
  });

  test('reports what is there, not what the scene says', () => {
    const scene = scenesOf(SEED, 'train', 40).find((s) => s.objects.length === 2)!;
    const recoloured: Scene = { ...scene, objects: scene.objects.map((o) => ({ ...o, color: o.color === 'red' ? 'blue' : 'red' })) };
    const score = scoreDescription(scene, sceneFromImage(renderScene(recoloured)));
    expect(score.color.correct).toBeLessThan(2);
    expect(score.consistent).toBe(false);
    const empty = renderScene({ ...scene, objects: [] });
    const detected = sceneFromImage(empty);
    expect(detected.objects).toEqual([]);
    expect(detected.background).toBe(scene.background);
    expect(scoreDescription(scene, detected)).toMatchObject({ count: false, color: { correct: 0, total: 2 }, consistent: false });
    expect(() => sceneFromImage({ data: new Uint8Array(5), width: 2, height: 2 })).toThrow(RoundtripError);
    expect(() => sceneFromImage(empty, { colorTolerance: -1 })).toThrow(/colorTolerance/);
  });
});

describe('writeWorld', () => {
  const counts = { train: 12, val: 6, test: 8 };

  test('writes the Karpathy and COCO layouts of the real files, and world.json', async () => {
    const dir = await tempDir();
    try {
      const { manifest, reused } = await writeWorld(dir, { seed: SEED, counts, ...quiet });
      expect(reused).toBe(false);
      const realTest = (await readJson(path.join(DATA, 'coco-karpathy', 'coco_karpathy_test.json'))) as Record<string, unknown>[];
      const realGt = (await readJson(path.join(DATA, 'coco-karpathy', 'coco_karpathy_test_gt.json'))) as Record<string, Record<string, unknown>[]>;
      const keys = (o: object): string[] => Object.keys(o).sort();

      for (const split of ['val', 'test'] as const) {
        const entries = (await readJson(path.join(dir, WORLD_FILES[split]))) as { image: string; caption: string[] }[];
        expect(entries).toHaveLength(counts[split]);
        for (const entry of entries) {
          expect(keys(entry)).toEqual(keys(realTest[0]));
          expect(entry.image).toMatch(new RegExp(`^images/${split}/\\d{6}\\.png$`));
          expect(entry.caption).toHaveLength(CAPTIONS_PER_IMAGE);
        }
        const gt = (await readJson(path.join(dir, split === 'val' ? WORLD_FILES.valGt : WORLD_FILES.testGt))) as typeof realGt;
        expect(keys(gt)).toEqual(keys(realGt));
        expect(keys(gt.images[0])).toEqual(keys(realGt.images[0]));
        expect(keys(gt.annotations[0])).toEqual(keys(realGt.annotations[0]));
        expect(gt.images.map((i) => i.id)).toEqual(entries.map((e) => imageIdFromPath(e.image)));
        expect(new Set(gt.annotations.map((a) => a.id)).size).toBe(gt.annotations.length);
        for (const a of gt.annotations) {
          expect(typeof a.image_id).toBe(typeof realGt.annotations[0].image_id);
          expect(typeof a.id).toBe(typeof realGt.annotations[0].id);
          const entry = entries.find((e) => imageIdFromPath(e.image) === a.image_id)!;
          expect(entry.caption).toContain(a.caption);
        }
      }

      const train = (await readJson(path.join(dir, WORLD_FILES.train))) as Record<string, unknown>[];
      expect(train).toHaveLength(counts.train * CAPTIONS_PER_IMAGE);
      for (const entry of train) {
        // BLIP's coco_karpathy_train.json: {"caption": str, "image": path, "image_id": "coco_<n>"}
        expect(keys(entry)).toEqual(['caption', 'image', 'image_id']);
        expect(typeof entry.caption).toBe('string');
        expect(entry.image_id).toMatch(/^world_\d{6}$/);
      }

      const world = await readWorld(dir);
      expect(world).toEqual(JSON.parse(JSON.stringify(manifest)));
      expect(world.version).toBe(WORLD_GENERATOR_VERSION);
      expect(world.seed).toBe(SEED);
      expect(world.counts).toEqual(counts);
      expect(world.entries.test.map((e) => e.captions)).toEqual(((await readJson(path.join(dir, WORLD_FILES.test))) as { caption: string[] }[]).map((e) => e.caption));
      expect(world.entries.train.flatMap((e) => e.captions)).toEqual(train.map((e) => e.caption));

      // The PNGs decode to the rendered scenes, and the detector reads them back.
      for (const entry of [...world.entries.train.slice(0, 3), ...world.entries.test.slice(0, 3)]) {
        const file = path.join(dir, entry.image);
        const meta = await sharp(file).metadata();
        expect([meta.format, meta.width, meta.height, meta.channels]).toEqual(['png', 64, 64, 3]);
        const decoded = await decodeImage(await fs.readFile(file));
        expect(Buffer.from(decoded.data).equals(Buffer.from(renderScene(entry, 64).data))).toBe(true);
        expect(scoreDescription(entry, sceneFromImage(decoded)).consistent).toBe(true);
      }
      // no temp files left behind
      const names = [...(await hashTree(dir)).keys()];
      expect(names.filter((n) => n.includes('.tmp'))).toEqual([]);
      expect(names).toHaveLength(6 + counts.train + counts.val + counts.test);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  test('is byte-identical for a seed, different for another, and reuses a matching world', async () => {
    const [a, b, c] = await Promise.all([tempDir(), tempDir(), tempDir()]);
    try {
      await writeWorld(a, { seed: SEED, counts, ...quiet });
      await writeWorld(b, { seed: SEED, counts, concurrency: 1, ...quiet });
      await writeWorld(c, { seed: SEED + 1, counts, ...quiet });
      const [ha, hb, hc] = await Promise.all([hashTree(a), hashTree(b), hashTree(c)]);
      expect(hb).toEqual(ha);
      const differing = [...ha].filter(([name, hash]) => hc.get(name) !== hash).length;
      expect(differing).toBeGreaterThan(0.9 * ha.size);

      // Reuse: nothing rewritten (modification times unchanged).
      const pngPath = path.join(a, 'images', 'test', '000000.png');
      const before = (await fs.stat(pngPath)).mtimeMs;
      const worldBefore = (await fs.stat(path.join(a, 'world.json'))).mtimeMs;
      const again = await writeWorld(a, { seed: SEED, counts, ...quiet });
      expect(again.reused).toBe(true);
      expect((await fs.stat(pngPath)).mtimeMs).toBe(before);
      expect((await fs.stat(path.join(a, 'world.json'))).mtimeMs).toBe(worldBefore);

      // A missing image or different options regenerate; smaller counts remove stale images.
      await fs.rm(pngPath);
      expect((await writeWorld(a, { seed: SEED, counts, ...quiet })).reused).toBe(false);
      expect(await hashTree(a)).toEqual(ha);
      const smaller = { train: 5, val: 2, test: 3 };
      expect((await writeWorld(a, { seed: SEED, counts: smaller, ...quiet })).reused).toBe(false);
      expect((await fs.readdir(path.join(a, 'images', 'train'))).sort()).toEqual(['000000.png', '000001.png', '000002.png', '000003.png', '000004.png']);
      // Scene i is the same whatever the counts: the smaller world is a prefix of the larger.
      const small = await hashTree(a);
      expect(small.get(path.join('images', 'train', '000004.png'))).toBe(ha.get(path.join('images', 'train', '000004.png')));
      expect((await writeWorld(a, { seed: SEED, counts: smaller, size: 48, ...quiet })).reused).toBe(false);
      expect((await sharp(path.join(a, 'images', 'val', '000001.png')).metadata()).width).toBe(48);
      expect((await writeWorld(a, { seed: SEED, counts: smaller, size: 48, force: true, ...quiet })).reused).toBe(false);
    } finally {
      await Promise.all([a, b, c].map((d) => fs.rm(d, { recursive: true, force: true })));
    }
  });

  test('makes 2,000 images in a few seconds', async () => {
    const dir = await tempDir();
    try {
      const started = Date.now();
      const inMemory = generateWorld({ seed: SEED, counts: { train: 1600, val: 200, test: 200 } });
      const images = SPLITS.flatMap((s) => inMemory.entries[s]).map((entry) => renderScene(entry));
      const renderSeconds = (Date.now() - started) / 1000;
      const result = await writeWorld(dir, { seed: SEED, counts: { train: 1600, val: 200, test: 200 }, concurrency: 8, ...quiet });
      console.log(`synthetic world: ${images.length} scenes + captions + 64×64 renders in memory ${renderSeconds.toFixed(2)} s; written as PNG + annotations in ${result.seconds.toFixed(2)} s (${(2000 / result.seconds).toFixed(0)} images/s)`);
      // Generous bounds: the build machine is shared; typical values are ~1 s and ~3 s.
      expect(renderSeconds).toBeLessThan(15);
      expect(result.seconds).toBeLessThan(40);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  test('bad options and bad world folders give clear errors', async () => {
    const dir = await tempDir();
    try {
      await expect(writeWorld(dir, { seed: -1, counts, ...quiet })).rejects.toThrow(/world seed: expected an integer/);
      await expect(writeWorld(dir, { seed: 1, counts: { train: 1, val: 1 } as never, ...quiet })).rejects.toThrow(/world counts\.test/);
      await expect(writeWorld(dir, { seed: 1, counts: { ...counts, dev: 3 } as never, ...quiet })).rejects.toThrow(/only the keys train, val, test.*"dev"/);
      await expect(writeWorld(dir, { seed: 1, counts, size: 16, ...quiet })).rejects.toThrow(/world size: expected an integer in \[32, 1024\]/);
      await expect(writeWorld(dir, { seed: 1, counts, force: 'yes' as never, ...quiet })).rejects.toThrow(/world force: expected a boolean/);
      await expect(readWorld(dir)).rejects.toThrow(/world\.json: cannot read the world manifest/);
      await fs.writeFile(path.join(dir, 'world.json'), '{"format": "other"}');
      await expect(readWorld(dir)).rejects.toThrow(/world\.json: format: expected "roundtrip-synthetic-world"/);
      await fs.writeFile(path.join(dir, 'world.json'), '{oops');
      await expect(readWorld(dir)).rejects.toThrow(/world\.json:\d+:\d+: not valid JSON/);
      // A broken world.json is not an error for writeWorld: it regenerates.
      expect((await writeWorld(dir, { seed: 1, counts, ...quiet })).reused).toBe(false);
      expect(() => imageIdFromPath('images/test/cat.jpg')).toThrow(/image path: expected a world image path/);
      expect(() => renderScene(generateScene(1, 'train', 0), 8)).toThrow(/size: expected an integer in \[32, 1024\]/);
      expect(() => generateScene(1, 'dev' as never, 0)).toThrow(/split: expected one of/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
