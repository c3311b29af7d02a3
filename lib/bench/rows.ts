/**
 * The built-in rows of `roundtrip bench`, per component (issue #15 / #22 workloads): load time, UNet forward and
 * forward+backward, VAE encode/decode, CLIP text, BLIP loss forward+backward and beam search, SD sampling per
 * step, and the whole `generate` process (ready-to-sample time, wall time, peak RSS) in a child process.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Blip } from '../models/blip';
import { StableDiffusionPipeline } from '../models/sd/pipeline';
import { releaseMemory } from '../runtime/memory';
import { Tensor, disposeAll, noGrad } from '../runtime/tensor';
import { registerBenchRow } from './registry';
import type { BenchModels } from './models';
import { PACKAGE_ROOT } from '../paths';

const ROOT = PACKAGE_ROOT;

/** Deterministic int64 ids in [lo, hi). */
function ids(rows: number, cols: number, lo: number, hi: number, first?: number): Tensor {
  const data = new BigInt64Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = BigInt(first !== undefined && i % cols === 0 ? first : lo + ((i * 7919) % (hi - lo)));
  return Tensor.fromTypedArray(data, [rows, cols], 'int64');
}

const scalar = (x: number) => Tensor.fromTypedArray(new Float32Array([x]), []);

registerBenchRow({
  name: 'load.sd',
  describe: 'StableDiffusionPipeline.load: UNet, VAE and CLIP text (parallel, mapped weights; warm page cache)',
  setup: async (m) => ({
    run: async () => {
      const p = await StableDiffusionPipeline.load(m.sdDir);
      const t = p.loadTimes;
      p.dispose();
      const parts = [t.unet, t.vae, t.textEncoder];
      return { unetMs: t.unet?.ms, vaeMs: t.vae?.ms, textEncoderMs: t.textEncoder?.ms, mappedMB: parts.reduce((n, c) => n + (c?.mappedBytes ?? 0), 0) / 2 ** 20 };
    },
  }),
});

registerBenchRow({
  name: 'load.blip',
  describe: 'Blip.load (vision + text decoder)',
  setup: async (m) => ({
    run: async () => {
      (await Blip.load(m.blipDir)).dispose();
    },
  }),
});

/** UNet inputs of the CFG batch: 2 latents at the size's latent side, 77 text tokens. */
async function unetInputs(m: BenchModels) {
  const p = await m.sd();
  const cross = p.unet.crossAttentionDim;
  return { p, x: Tensor.randn([2, 4, m.latentSize, m.latentSize], 1), ehs: Tensor.randn([2, 77, cross], 2), t: scalar(500) };
}

registerBenchRow({
  name: 'unet.forward',
  describe: 'UNet forward, no grad: 2×4×h×w latents (the CFG batch), 77 tokens, t=500',
  setup: async (m) => {
    const { p, x, ehs, t } = await unetInputs(m);
    return {
      run: () => noGrad(async () => (await p.unet.forward(x, t, ehs)).sample.dispose()),
      dispose: () => disposeAll([x, ehs, t]),
    };
  },
});

registerBenchRow({
  name: 'unet.forward_backward',
  describe: 'UNet denoising MSE forward + backward, batch 1, only the attn2.to_q weights trainable',
  setup: async (m) => {
    const p = await m.sd();
    p.unet.model.setTrainable(['attn2\\.to_q\\.weight$']);
    const cross = p.unet.crossAttentionDim;
    const latents = Tensor.randn([1, 4, m.latentSize, m.latentSize], 3);
    const noise = Tensor.randn([1, 4, m.latentSize, m.latentSize], 4);
    const ehs = Tensor.randn([1, 77, cross], 5);
    const t = Tensor.fromTypedArray(BigInt64Array.from([500n]), [1], 'int64');
    return {
      run: async () => {
        const r = await p.unet.denoisingLoss(latents, noise, t, ehs, p.schedulerConfig);
        await r.loss.backward();
        disposeAll(r);
      },
      dispose: () => {
        p.unet.model.setTrainable([]);
        disposeAll([latents, noise, ehs, t]);
      },
    };
  },
});

registerBenchRow({
  name: 'vae.encode',
  describe: 'VAE encode, 1 image of 8h×8w pixels',
  setup: async (m) => {
    const p = await m.sd();
    const side = m.latentSize * p.vaeFactor;
    const image = Tensor.randn([1, 3, side, side], 6);
    return {
      run: () => noGrad(async () => disposeAll(await p.vae.encode(image))),
      dispose: () => image.dispose(),
    };
  },
});

registerBenchRow({
  name: 'vae.decode',
  describe: 'VAE decode, 1×4×h×w latents',
  setup: async (m) => {
    const p = await m.sd();
    const z = Tensor.randn([1, 4, m.latentSize, m.latentSize], 7);
    return {
      run: () => noGrad(async () => disposeAll(await p.vae.decode(z, { scaled: true }))),
      dispose: () => z.dispose(),
    };
  },
});

registerBenchRow({
  name: 'clip.text',
  describe: 'CLIP text encoder, 2×77 tokens',
  setup: async (m) => {
    const p = await m.sd();
    const input = ids(2, 77, 1000, 40000, 49406);
    return {
      run: () => noGrad(async () => disposeAll(await p.textEncoder.call('text', { input_ids: input }))),
      dispose: () => input.dispose(),
    };
  },
});

/** BLIP inputs: `batch` images at the config's size, 16 caption tokens (BOS first). */
async function blipInputs(m: BenchModels, batch: number) {
  const blip = await m.blip();
  const side = blip.imageSize;
  return { blip, pixels: Tensor.randn([batch, 3, side, side], 8), inputIds: ids(batch, 16, 1000, 30000, blip.special.bos) };
}

registerBenchRow({
  name: 'blip.loss_forward_backward',
  describe: 'BLIP caption loss forward + backward, 2 images, 16 tokens, only cross-attention queries trainable',
  setup: async (m) => {
    const { blip, pixels, inputIds } = await blipInputs(m, 2);
    blip.model.setTrainable(['crossattention\\.self\\.query\\.weight$']);
    return {
      run: async () => {
        const loss = await blip.loss({ pixelValues: pixels, inputIds, labels: inputIds });
        await loss.backward();
        loss.dispose();
      },
      dispose: () => {
        blip.model.setTrainable([]);
        disposeAll([pixels, inputIds]);
      },
    };
  },
});

registerBenchRow({
  name: 'blip.beam_search',
  describe: 'BLIP beam search, 1 image, 3 beams, length 5..20',
  setup: async (m) => {
    const { blip, pixels, inputIds } = await blipInputs(m, 1);
    inputIds.dispose();
    return {
      run: () => noGrad(async () => disposeAll(await blip.generate(pixels, { strategy: 'beam', numBeams: 3, maxLength: 20, minLength: 5 }))),
      dispose: () => pixels.dispose(),
    };
  },
});

const SAMPLING_STEPS = 4;

registerBenchRow({
  name: 'sd.sampling',
  describe: `SD sampling loop (one native call): DDIM ${SAMPLING_STEPS} steps, CFG 7.5, 1 image; per step`,
  unit: 'ms/step',
  setup: async (m) => {
    const p = await m.sd();
    const cross = p.unet.crossAttentionDim;
    const latents = Tensor.randn([1, 4, m.latentSize, m.latentSize], 9);
    const cond = Tensor.randn([1, 77, cross], 10);
    const uncond = Tensor.randn([1, 77, cross], 11);
    return {
      run: () =>
        noGrad(async () => {
          const r = await p.unet.sample({ latents, condEmbeds: cond, uncondEmbeds: uncond }, { scheduler: 'ddim', schedulerConfig: p.schedulerConfig, steps: SAMPLING_STEPS, guidance: 7.5 });
          disposeAll(r);
          return { units: SAMPLING_STEPS };
        }),
      dispose: () => disposeAll([latents, cond, uncond]),
    };
  },
});

/** What scripts/bench-generate-child.js prints. */
interface ChildReport {
  readyMs: number;
  wallMs: number;
  peakRssMB: number;
  minorFaults: number;
}

function runChild(args: string[]): Promise<ChildReport> {
  const script = path.join(ROOT, 'scripts', 'bench-generate-child.js');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`generate child exited with ${code}: ${err.trim().split('\n').slice(-3).join(' | ')}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!));
      } catch {
        reject(new Error(`generate child printed no report: ${out.slice(-200)}`));
      }
    });
  });
}

/** A whole `generate` process in a child: `scale` × the size's sample side, weights as `frozenDtype`. */
function generateProcessRow(name: string, what: string, scale: number, frozenDtype: 'fp32' | 'bf16', vaeSlicing: boolean): void {
  registerBenchRow({
    name,
    describe: `a whole generate process: load, 1 prompt, Euler ${SAMPLING_STEPS} steps, CFG 7.5, ${what}, decode (child process; ready = load done)`,
    maxReps: 3,
    maxWarmup: 0,
    setup: async (m) => {
      // The child loads the models itself: free ours so its numbers are its own.
      m.dispose();
      releaseMemory();
      const out = fs.mkdtempSync(path.join(os.tmpdir(), 'roundtrip-bench-gen-'));
      const side = m.latentSize * 8 * scale;
      return {
        run: async () => {
          const r = await runChild([m.sdDir, out, String(side), String(SAMPLING_STEPS), frozenDtype, vaeSlicing ? '1' : '0']);
          return { readyMs: r.readyMs, wallMs: r.wallMs, peakRssMB: r.peakRssMB, processFaults: r.minorFaults };
        },
        dispose: () => fs.rmSync(out, { recursive: true, force: true }),
      };
    },
  });
}

generateProcessRow('generate.process', '8h×8w', 1, 'fp32', false);
// Issue #22's 512² target (sd14: 64² latents) with VAE slicing, and the weights held in bf16 (an approximation).
generateProcessRow('generate.process.2x', '16h×16w (512² at sd14), VAE slicing', 2, 'fp32', true);
generateProcessRow('generate.process.bf16', '8h×8w, weights held in bf16 (--frozen-dtype bf16)', 1, 'bf16', false);
generateProcessRow('generate.process.2x.bf16', '16h×16w, VAE slicing, weights held in bf16', 2, 'bf16', true);
