#!/usr/bin/env node
// Answers binding.gyp's questions (sources, include dirs, libraries) with the same libtorch lookup as
// CMakeLists.txt: LIBTORCH, then Torch_DIR, then Debian's libtorch-dev under /usr.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');

function torchRoot() {
  if (process.env.LIBTORCH) return process.env.LIBTORCH;
  if (process.env.Torch_DIR) return path.resolve(process.env.Torch_DIR, '..', '..', '..'); // <root>/share/cmake/Torch
  return null; // system install
}

function sources(dir) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sources(p));
    else if (entry.name.endsWith('.cc')) out.push(path.relative(root, p));
  }
  return out.sort();
}

const what = process.argv[2];
const tr = torchRoot();
if (what === 'sources') {
  console.log(sources(path.join(root, 'native')).join(' '));
} else if (what === 'include') {
  const inc = tr ? [path.join(tr, 'include'), path.join(tr, 'include', 'torch', 'csrc', 'api', 'include')] : ['/usr/include/torch/csrc/api/include'];
  console.log(inc.join(' '));
} else if (what === 'libs') {
  const libs = ['-ltorch', '-ltorch_cpu', '-lc10'];
  if (tr) {
    const lib = path.join(tr, 'lib');
    if (fs.existsSync(path.join(lib, 'libtorch_cuda.so'))) libs.push('-ltorch_cuda', '-lc10_cuda');
    console.log([`-L${lib}`, `-Wl,-rpath,${lib}`, ...libs].join(' '));
  } else {
    console.log(libs.join(' '));
  }
} else {
  console.error('usage: gyp-config.js sources|include|libs');
  process.exit(2);
}
