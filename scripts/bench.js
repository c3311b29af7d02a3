#!/usr/bin/env node
// `npm run bench [-- --size sd14 --json ...]`: the per-component benchmark table (`roundtrip bench`); needs
// `npm run build` (dist/). Any `roundtrip bench` argument is passed through.
'use strict';
process.argv.splice(2, 0, 'bench');
require('../bin/roundtrip.js');
