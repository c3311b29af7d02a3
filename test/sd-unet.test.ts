import * as path from 'path';
import '../lib/conformance/sd-unet';
import { runConformanceCase } from '../lib/conformance/registry';
import { REFERENCE } from './support/paths';

jest.setTimeout(120000);

test('sd-unet fixture: forward, loss, gradients, intermediates, odd size', async () => {
  const res = await runConformanceCase(path.join(REFERENCE, 'sd-unet'));
  const bad = res.results.filter((r) => r.status !== 'ok');
  if (bad.length) console.log(bad);
  expect(bad).toEqual([]);
  expect(res.results.length).toBeGreaterThan(30);
});
