/**
 * NoCaps' in-domain / near-domain / out-domain split of Table 1. The domains come from the official
 * NoCaps annotation layout (`nocaps_val_4500_captions.json`: `images[]` with `id`, `file_name`,
 * `domain`); a record is matched by its image id, else by its image file name.
 */
import * as path from 'path';
import { RoundtripError, invalid } from '../../errors';
import { readJsonFile } from '../../json';
import type { ItemRecord } from '../rerank/types';

export const NOCAPS_DOMAINS = ['in-domain', 'near-domain', 'out-domain'] as const;

/** id → domain and file name → domain, from a NoCaps-layout annotation file. */
export function readNocapsDomains(file: string): { byId: Map<string, string>; byName: Map<string, string> } {
  const raw = readJsonFile(file);
  if (!raw || typeof raw !== 'object' || !Array.isArray((raw as any).images)) throw invalid(`--nocaps-domains ${file}`, 'the NoCaps annotation layout {images: [{id, file_name, domain}], …}', raw);
  const byId = new Map<string, string>();
  const byName = new Map<string, string>();
  (raw as any).images.forEach((img: any, i: number) => {
    if (!img || typeof img.domain !== 'string') throw invalid(`--nocaps-domains ${file} images[${i}].domain`, `one of ${NOCAPS_DOMAINS.join(', ')}`, img?.domain);
    if (img.id !== undefined) byId.set(String(img.id), img.domain);
    if (typeof img.file_name === 'string') byName.set(path.basename(img.file_name), img.domain);
  });
  if (byId.size === 0 && byName.size === 0) throw new RoundtripError(`--nocaps-domains ${file}: no images`);
  return { byId, byName };
}

/** Records grouped by domain (records without a known domain are counted apart). */
export function splitByDomain(records: ItemRecord[], domains: ReturnType<typeof readNocapsDomains>): { groups: Map<string, ItemRecord[]>; unknown: number } {
  const groups = new Map<string, ItemRecord[]>();
  let unknown = 0;
  for (const r of records) {
    const d = domains.byId.get(r.id) ?? (r.input.image ? domains.byName.get(path.basename(r.input.image)) : undefined);
    if (!d) {
      unknown++;
      continue;
    }
    if (!groups.has(d)) groups.set(d, []);
    groups.get(d)!.push(r);
  }
  return { groups, unknown };
}
