/**
 * Which files of a hub repo to download: configs, tokenizer/preprocessor files and one set of
 * PyTorch weights, preferring safetensors over pickled `.bin`, and skipping other frameworks'
 * weights (TensorFlow `.h5`, Flax `.msgpack`, ONNX, OpenVINO, Core ML, Rust `.ot`), checkpoints
 * (`.ckpt`) and documentation.
 */

/** One file of the hub's tree listing (`GET /api/models/{repo}/tree/{revision}?recursive=true`). */
export interface TreeFile {
  path: string;
  size: number;
  /** Git blob sha1 of the file (of the LFS pointer for LFS files). */
  oid: string;
  /** Present for LFS files: sha256 and size of the real content. */
  lfs?: { oid: string; size: number };
}

export interface SelectOptions {
  /** Weights variant such as `fp16` (files named `*.fp16.safetensors`). */
  variant?: string;
  /** Restricts the candidates first (an alias's own list of needed files). */
  allow?: (path: string) => boolean;
}

export interface Selection {
  files: TreeFile[];
  /** Human-readable remarks (e.g. a requested variant that a folder lacks). */
  notes: string[];
}

/** Folders that only hold other runtimes' exports. */
const SKIPPED_DIRS = new Set(['onnx', 'openvino', 'coreml', 'tflite', 'tf', 'flax', 'mlx', 'ggml', 'gguf']);
/** Non-weight files worth having: configs, tokenizers, vocabularies, sentencepiece models. */
const SIDE_FILE = /\.(json|txt|model|tiktoken)$/i;
const WEIGHT_FILE = /^(?<base>.+?)(?:\.(?<variant>[A-Za-z0-9_]+))?\.(?<format>safetensors|bin)(?<index>\.index\.json)?$/;
/** `.bin` files that are model weights (`training_args.bin`, `optimizer.bin` are not). */
const BIN_WEIGHT_BASE = /(^|_)model(-\d+-of-\d+)?$/;

interface WeightInfo {
  file: TreeFile;
  dir: string;
  format: 'safetensors' | 'bin';
  variant: string | undefined;
}

function weightInfo(file: TreeFile): WeightInfo | undefined {
  const slash = file.path.lastIndexOf('/');
  const dir = slash < 0 ? '' : file.path.slice(0, slash);
  const name = file.path.slice(slash + 1);
  const match = WEIGHT_FILE.exec(name);
  if (!match?.groups) return undefined;
  const format = match.groups.format as 'safetensors' | 'bin';
  if (format === 'bin' && !BIN_WEIGHT_BASE.test(match.groups.base)) return undefined;
  return { file, dir, format, variant: match.groups.variant };
}

function inSkippedDir(p: string): boolean {
  return p.split('/').slice(0, -1).some((part) => SKIPPED_DIRS.has(part.toLowerCase()));
}

/** Picks the files to download from a tree listing; see the module comment for the rules. */
export function selectRepoFiles(tree: readonly TreeFile[], options: SelectOptions = {}): Selection {
  const notes: string[] = [];
  const candidates = tree.filter((f) => !inSkippedDir(f.path) && (!options.allow || options.allow(f.path)));
  const weightsByDir = new Map<string, WeightInfo[]>();
  const side: TreeFile[] = [];
  for (const file of candidates) {
    const weight = weightInfo(file);
    if (weight) {
      const list = weightsByDir.get(weight.dir) ?? [];
      list.push(weight);
      weightsByDir.set(weight.dir, list);
    } else if (SIDE_FILE.test(file.path)) {
      side.push(file);
    }
  }
  const chosen: TreeFile[] = [...side];
  for (const [dir, weights] of weightsByDir) {
    const format = weights.some((w) => w.format === 'safetensors') ? 'safetensors' : 'bin';
    const ofFormat = weights.filter((w) => w.format === format);
    let variant: string | undefined;
    if (options.variant) {
      if (ofFormat.some((w) => w.variant === options.variant)) variant = options.variant;
      else notes.push(`${dir || '(top level)'}: no ${options.variant} variant, using the default weights`);
    }
    chosen.push(...ofFormat.filter((w) => w.variant === variant).map((w) => w.file));
  }
  chosen.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { files: chosen, notes };
}

/** True for a weight file (safetensors or PyTorch `.bin`), index files excluded. */
export function isWeightFile(p: string): boolean {
  const name = p.slice(p.lastIndexOf('/') + 1);
  const match = WEIGHT_FILE.exec(name);
  return Boolean(match?.groups && !match.groups.index && (match.groups.format === 'safetensors' || BIN_WEIGHT_BASE.test(match.groups.base)));
}
