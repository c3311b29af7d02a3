#!/usr/bin/env node
// Benchmark of the joint finetuning step (see lib/train/finetune/bench.ts); needs `npm run build` (dist/).
// Usage: node scripts/bench-finetune.js --config examples/finetune-coco.json [--steps 5] [--device cuda] [any finetune flag]
'use strict';
const { runBenchFinetune } = require('../dist/cli/commands/bench.js');

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) out[key] = true;
    else {
      out[key] = /^-?\d+(\.\d+)?(e-?\d+)?$/i.test(next) ? Number(next) : next === 'false' ? false : next === 'true' ? true : next;
      i++;
    }
  }
  return out;
}

runBenchFinetune(parseArgs(process.argv.slice(2)))
  .then((r) => process.stdout.write(r.text))
  .catch((err) => {
    process.stderr.write(`bench-finetune: ${err && err.message ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
