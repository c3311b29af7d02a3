/**
 * The vocabulary bridge of the joint method (paper, Appendix G): a map from every CLIP BPE id to the BLIP
 * WordPiece id its probability is read from, so BLIP's per-step token distributions can condition Stable
 * Diffusion's text encoder (`P_clip[:, :, c] = P_blip[:, :, bridge[c]]`).
 *
 * Learning it from a caption corpus:
 * 1. Tokenise each caption with both tokenisers; give every token its character span in the caption with
 *    whitespace removed (WordPiece `##` and BPE `</w>` markers dropped).
 * 2. Where a CLIP token and a BLIP token cover exactly the same span, count the pair.
 * 3. Each CLIP id takes its most frequent partner (ties → the smaller BLIP id, for determinism).
 * 4. CLIP ids never aligned take the BLIP token with the same text (`dog`, then `##dog`), else `[UNK]`.
 * 5. CLIP's start/end tokens map to BLIP's `[DEC]`/`[SEP]`.
 * Coverage = share of captions whose CLIP ids map, position by position, onto exactly their BLIP ids.
 *
 * BLIP-2's OPT byte-level BPE gets a bridge built the same way (`buildOptBridge`): the captioner side's pieces are
 * the OPT tokens' decoded text, the string fallback looks up the word-initial form (`Ġdog`, then `dog`), unknown ids
 * take OPT's `<unk>`, CLIP's start/end map to OPT's BOS and to the model's EOS (`text_config.eos_token_id`, "\n" in
 * blip2-opt-2.7b), and ids the model's vocabulary does not hold are never chosen.
 */
import * as fs from 'fs';
import { RoundtripError, invalid } from '../../errors';
import { writeFileAtomicSync } from '../../fsutil';
import { readTorchFileSync, stateDictOf } from '../../weights/torchfile';
import type { BertTokenizer } from '../../tokenizers/bert';
import type { ClipTokenizer } from '../../tokenizers/clip';
import type { OptTokenizer } from '../../tokenizers/opt';
import { parseJsonText, readJsonFile } from '../../json';

export interface BridgeStats {
  captions: number;
  /** Captions whose two tokenisations cover the same characters (others are not used for alignment). */
  alignedCaptions: number;
  /** Captions whose CLIP ids map exactly onto their BLIP ids. */
  exactCaptions: number;
  /** exactCaptions / captions. */
  coverage: number;
  /** CLIP ids mapped from alignment counts, from string equality, and left at [UNK]. */
  fromAlignment: number;
  fromString: number;
  unknown: number;
}

export interface VocabularyBridge {
  format: 'roundtrip-bridge-v1';
  clipVocabSize: number;
  blipVocabSize: number;
  /** clipToBlip[c] = the captioner id (BLIP WordPiece, or BLIP-2's OPT BPE) whose probability CLIP id c receives. */
  clipToBlip: number[];
  /** The captioner vocabulary the ids index: 'bert' (BLIP, also when absent: older files) or 'opt' (BLIP-2). */
  tokenizer?: BridgeTokenizerKind;
  stats?: BridgeStats;
}

export type BridgeTokenizerKind = 'bert' | 'opt';

/** What learning a bridge needs from the captioner's tokenizer. */
interface CaptionerSide {
  kind: BridgeTokenizerKind;
  vocabSize: number;
  unkId: number;
  startId: number;
  endId: number;
  /** Ids without specials, and each id's text without markers. */
  pieces(caption: string): { pieces: string[]; ids: number[] };
  /** The id whose token has this text (word-initial form first), if any. */
  lookup(text: string): number | undefined;
}

function bertSide(blip: BertTokenizer): CaptionerSide {
  if (blip.decId === undefined) throw new RoundtripError('bridge: the BLIP tokenizer has no [DEC] token');
  const cache = new Map<number, string>();
  return {
    kind: 'bert',
    vocabSize: blip.vocabSize,
    unkId: blip.unkId,
    startId: blip.decId,
    endId: blip.sepId,
    pieces: (caption) => blipPieces(blip, caption, cache),
    lookup: (text) => blip.tokenToId(text) ?? blip.tokenToId('##' + text),
  };
}

function optSide(opt: OptTokenizer, o: { eosId: number; vocabSize: number }): CaptionerSide {
  const cache = new Map<number, string>();
  const within = (id: number | undefined) => (id !== undefined && id < o.vocabSize ? id : undefined);
  return {
    kind: 'opt',
    vocabSize: o.vocabSize,
    unkId: opt.unkId,
    startId: opt.bosId,
    endId: o.eosId,
    pieces: (caption) => {
      const ids = opt.encode(caption);
      return { ids, pieces: ids.map((id) => pieceText(cache, id, () => opt.decode([id]).replace(/\s+/g, ''))) };
    },
    // byte-level BPE: 'Ġ' marks a leading space (the word-initial form, as CLIP's '</w>' marks the word end)
    lookup: (text) => within(opt.tokenToId('\u0120' + text)) ?? within(opt.tokenToId(text)),
  };
}

interface Span {
  id: number;
  start: number;
  end: number;
}

function spans(pieces: string[], ids: number[]): { spans: Span[]; text: string } {
  const out: Span[] = [];
  let text = '';
  pieces.forEach((p, i) => {
    const start = text.length;
    text += p;
    out.push({ id: ids[i], start, end: text.length });
  });
  return { spans: out, text };
}

/** Token text without markers, cached per id (decoding byte-level BPE per token is not free). */
function pieceText(cache: Map<number, string>, id: number, text: () => string): string {
  let t = cache.get(id);
  if (t === undefined) cache.set(id, (t = text()));
  return t;
}

function blipPieces(blip: BertTokenizer, caption: string, cache: Map<number, string>): { pieces: string[]; ids: number[] } {
  const ids = blip.encode(caption);
  const pieces = ids.map((id) => pieceText(cache, id, () => (blip.idToToken(id) ?? '').replace(/^##/, '')));
  return { pieces, ids };
}

function clipPieces(clip: ClipTokenizer, caption: string, cache: Map<number, string>): { pieces: string[]; ids: number[] } {
  const ids = clip.encode(caption);
  const pieces = ids.map((id) => pieceText(cache, id, () => clip.decode([id]).replace(/\s+/g, '')));
  return { pieces, ids };
}

/** Learns a bridge from captions (see the module comment for the algorithm). */
export function buildBridge(captions: Iterable<string>, blip: BertTokenizer, clip: ClipTokenizer): VocabularyBridge {
  return learnBridge(captions, bertSide(blip), clip);
}

/**
 * Learns BLIP-2's OPT-BPE → CLIP-BPE bridge from captions, as `buildBridge` does for BLIP: `eosId` is the model's
 * `text_config.eos_token_id` and `vocabSize` its `text_config.vocab_size` (no id at or above it is chosen).
 */
export function buildOptBridge(captions: Iterable<string>, opt: OptTokenizer, clip: ClipTokenizer, o: { eosId: number; vocabSize: number }): VocabularyBridge {
  return learnBridge(captions, optSide(opt, o), clip);
}

function learnBridge(captions: Iterable<string>, side: CaptionerSide, clip: ClipTokenizer): VocabularyBridge {
  const pairCounts = new Map<number, Map<number, number>>();
  const tokenized: { c: number[]; b: number[] }[] = [];
  let aligned = 0;
  const clipCache = new Map<number, string>();
  for (const caption of captions) {
    const b = side.pieces(caption);
    const c = clipPieces(clip, caption, clipCache);
    tokenized.push({ c: c.ids, b: b.ids });
    const sb = spans(b.pieces, b.ids);
    const sc = spans(c.pieces, c.ids);
    if (sb.text !== sc.text) continue; // accents, unknown characters: spans would not be comparable
    aligned++;
    const byStart = new Map<number, Span>();
    for (const s of sb.spans) byStart.set(s.start, s);
    for (const s of sc.spans) {
      const m = byStart.get(s.start);
      if (!m || m.end !== s.end || m.id >= side.vocabSize) continue;
      let counts = pairCounts.get(s.id);
      if (!counts) pairCounts.set(s.id, (counts = new Map()));
      counts.set(m.id, (counts.get(m.id) ?? 0) + 1);
    }
  }
  const clipToBlip = new Array<number>(clip.vocabSize).fill(side.unkId);
  let fromAlignment = 0;
  let fromString = 0;
  for (let c = 0; c < clip.vocabSize; c++) {
    const counts = pairCounts.get(c);
    if (counts) {
      let best = -1;
      let bestCount = -1;
      for (const [b, n] of counts) if (n > bestCount || (n === bestCount && b < best)) [best, bestCount] = [b, n];
      clipToBlip[c] = best;
      fromAlignment++;
      continue;
    }
    const text = clip.decode([c]).replace(/\s+/g, '');
    const id = text ? side.lookup(text) : undefined;
    if (id !== undefined && id !== side.unkId) {
      clipToBlip[c] = id;
      fromString++;
    }
  }
  clipToBlip[clip.sotId] = side.startId;
  clipToBlip[clip.eotId] = side.endId;
  let exact = 0;
  for (const { c, b } of tokenized) if (mapsExactly(clipToBlip, c, b)) exact++;
  const stats: BridgeStats = {
    captions: tokenized.length,
    alignedCaptions: aligned,
    exactCaptions: exact,
    coverage: tokenized.length ? exact / tokenized.length : 0,
    fromAlignment,
    fromString,
    unknown: clipToBlip.filter((b) => b === side.unkId).length,
  };
  return { format: 'roundtrip-bridge-v1', clipVocabSize: clip.vocabSize, blipVocabSize: side.vocabSize, clipToBlip, tokenizer: side.kind, stats };
}

/** Do these CLIP ids map, position by position, onto exactly these BLIP ids? */
export function mapsExactly(clipToBlip: ArrayLike<number>, clipIds: number[], blipIds: number[]): boolean {
  if (clipIds.length !== blipIds.length) return false;
  for (let i = 0; i < clipIds.length; i++) if (clipToBlip[clipIds[i]] !== blipIds[i]) return false;
  return true;
}

/** Coverage of a bridge on captions (share whose token sequences map exactly). */
export function bridgeCoverage(bridge: VocabularyBridge, captions: Iterable<string>, blip: Pick<BertTokenizer | OptTokenizer, 'encode'>, clip: ClipTokenizer): number {
  let n = 0;
  let exact = 0;
  for (const caption of captions) {
    n++;
    if (mapsExactly(bridge.clipToBlip, clip.encode(caption), blip.encode(caption))) exact++;
  }
  return n ? exact / n : 0;
}

export interface BridgeAgreement {
  /** Share of CLIP ids with the same BLIP id in both bridges. */
  all: number;
  /** The same, among CLIP ids that neither bridge leaves at [UNK]. */
  bothMapped: number;
  bothMappedCount: number;
}

/** Agreement between two bridges (e.g. a learned one and the paper authors' release). */
export function bridgeAgreement(a: VocabularyBridge, b: VocabularyBridge, unkId = 100): BridgeAgreement {
  if (a.clipToBlip.length !== b.clipToBlip.length) throw invalid('bridges', `equal CLIP vocabulary sizes (${a.clipToBlip.length})`, b.clipToBlip.length);
  let same = 0;
  let both = 0;
  let bothSame = 0;
  for (let c = 0; c < a.clipToBlip.length; c++) {
    const x = a.clipToBlip[c];
    const y = b.clipToBlip[c];
    if (x === y) same++;
    if (x !== unkId && y !== unkId) {
      both++;
      if (x === y) bothSame++;
    }
  }
  return { all: same / a.clipToBlip.length, bothMapped: both ? bothSame / both : 0, bothMappedCount: both };
}

/**
 * The authors' `vocabs/reindex.pth`: a bare 1-D integer tensor pickled at top level (one BLIP id per CLIP id), read
 * through the restricted unpickler; a one-tensor state dict is accepted too.
 */
function readTorchBridge(file: string): number[] {
  const { tensors } = stateDictOf(readTorchFileSync(file).value, file);
  if (tensors.size !== 1) throw new RoundtripError(`bridge file '${file}': expected one integer tensor, found ${tensors.size} tensors`);
  const [t] = tensors.values();
  if (t.shape.length !== 1) throw new RoundtripError(`bridge file '${file}': expected a 1-D tensor of BLIP ids, got shape [${t.shape}]`);
  const buf = t.readContiguousSync();
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: number[] = [];
  for (let i = 0; i < t.numel; i++) {
    if (t.dtype === 'I64') {
      const v = view.getBigInt64(8 * i, true);
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < 0n) throw new RoundtripError(`bridge file '${file}': entry ${i} (${v}) is not a BLIP id`);
      out.push(Number(v));
    } else if (t.dtype === 'I32') {
      out.push(view.getInt32(4 * i, true));
    } else {
      throw new RoundtripError(`bridge file '${file}': expected an int64 or int32 tensor, got ${t.dtype}`);
    }
  }
  return out;
}

/**
 * Reads a bridge file: roundtrip's JSON, the authors' release as JSON (a plain array, one BLIP id per CLIP id), or
 * their original `reindex.pth` (`.pth` / `.pt` / `.bin`: a torch.save'd tensor).
 */
export function loadBridge(file: string): VocabularyBridge {
  let raw: unknown;
  if (/\.(pth|pt|bin)$/i.test(file)) {
    raw = readTorchBridge(file);
  } else {
    raw = readJsonFile(file, { what: 'bridge' });
  }
  const arr = Array.isArray(raw) ? raw : (raw as VocabularyBridge)?.clipToBlip;
  if (!Array.isArray(arr) || !arr.every((x) => Number.isInteger(x) && x >= 0)) {
    throw new RoundtripError(`bridge file '${file}': expected an array of non-negative integer BLIP ids (or {clipToBlip: [...]})`);
  }
  const blipVocabSize = Array.isArray(raw) ? Math.max(...arr) + 1 : (raw as VocabularyBridge).blipVocabSize;
  const tokenizer = Array.isArray(raw) ? undefined : (raw as VocabularyBridge).tokenizer;
  if (tokenizer !== undefined && tokenizer !== 'bert' && tokenizer !== 'opt') throw new RoundtripError(`bridge file '${file}': "tokenizer" must be "bert" or "opt", got ${JSON.stringify(tokenizer)}`);
  return { format: 'roundtrip-bridge-v1', clipVocabSize: arr.length, blipVocabSize, clipToBlip: arr, ...(tokenizer ? { tokenizer } : {}), stats: Array.isArray(raw) ? undefined : (raw as VocabularyBridge).stats };
}

/** Writes a bridge atomically (temp file, fsync, rename). */
export function saveBridge(file: string, bridge: VocabularyBridge): void {
  const body = JSON.stringify({ ...bridge, clipToBlip: undefined, stats: bridge.stats }, null, 2).replace(/\n}$/, `,\n  "clipToBlip": ${JSON.stringify(bridge.clipToBlip)}\n}`);
  writeFileAtomicSync(file, body + '\n');
}

/** Captions from a file: Karpathy layout ([{caption: str|str[]}]), COCO layout ({annotations}), or text lines. */
export function readCaptions(file: string): string[] {
  let body: string;
  try {
    body = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new RoundtripError(`captions file '${file}': ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!/\.json$/i.test(file)) return body.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  const raw = parseJsonText(body, file, { what: 'captions' });
  const items: any[] = Array.isArray(raw) ? raw : Array.isArray(raw?.annotations) ? raw.annotations : [];
  const out: string[] = [];
  for (const item of items) {
    const c = item?.caption;
    if (typeof c === 'string') out.push(c);
    else if (Array.isArray(c)) out.push(...c.filter((x: unknown): x is string => typeof x === 'string'));
  }
  if (!out.length) throw new RoundtripError(`captions file '${file}': no captions found (expected [{caption}], {annotations: [{caption}]} or text lines)`);
  return out;
}
