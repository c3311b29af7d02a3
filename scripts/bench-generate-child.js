#!/usr/bin/env node
// One whole `generate` process for `roundtrip bench` (row generate.process): loads a diffusers folder, samples one
// image, writes it, and prints {readyMs, wallMs, peakRssMB, minorFaults} as one JSON line. Needs dist/ (npm run build).
// Usage: node scripts/bench-generate-child.js MODEL_DIR OUT_DIR SIDE STEPS [FROZEN_DTYPE fp32|bf16|fp16] [VAE_SLICING 0|1]
'use strict';
const { StableDiffusionPipeline } = require('../dist/models/sd/pipeline.js');

async function main() {
  const [model, out, side, steps, frozenDtype = 'fp32', slicing = '0'] = process.argv.slice(2);
  const pipe = await StableDiffusionPipeline.load(model, { frozenDtype });
  const readyMs = process.uptime() * 1000;
  try {
    const r = await pipe.generate(['a photograph of an astronaut riding a horse'], {
      scheduler: 'euler', steps: Number(steps), guidance: 7.5, height: Number(side), width: Number(side), seed: 0, vaeSlicing: slicing === '1',
      releaseTextEncoder: true, // as `roundtrip generate`: one call, then the process ends
    });
    await StableDiffusionPipeline.savePngs(r, out, 'bench');
    r.images.dispose();
  } finally {
    pipe.dispose();
  }
  const usage = process.resourceUsage();
  process.stdout.write(JSON.stringify({ readyMs, wallMs: process.uptime() * 1000, peakRssMB: usage.maxRSS / 1024, minorFaults: usage.minorPageFault }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`bench-generate-child: ${err && err.message ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
