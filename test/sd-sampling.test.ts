import * as path from 'path';
import '../lib/conformance/sd-sampling';
import { runConformanceCase } from '../lib/conformance/registry';
import { REFERENCE } from './support/paths';

jest.setTimeout(300000);

test('sd-sampling fixture: every output within its case.json tolerance', async () => {
  const res = await runConformanceCase(path.join(REFERENCE, 'sd-sampling'));
  const bad = res.results.filter((r) => r.status !== 'ok');
  if (bad.length) console.log(bad);
  expect(bad).toEqual([]);
  expect(res.results.length).toBeGreaterThan(5);
});
