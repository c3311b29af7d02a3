import * as fs from 'fs';
import * as path from 'path';

/** [atol, rtol] of one tensor, from a fixture folder's case.json (never copied into tests). */
export function tolerance(fixtureDir: string, tensor: string): [number, number] {
  const spec = JSON.parse(fs.readFileSync(path.join(fixtureDir, 'case.json'), 'utf8')).tensors?.[tensor];
  if (!spec || spec.recommended_atol === undefined) throw new Error(`${fixtureDir}/case.json has no tolerance for ${tensor}`);
  return [spec.recommended_atol, spec.recommended_rtol ?? 1e-4];
}
