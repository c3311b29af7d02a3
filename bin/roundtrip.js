#!/usr/bin/env node
'use strict';
const { main } = require('../dist/cli/index.js');
main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`roundtrip: ${err && err.message ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
