import type { CommandModule } from 'yargs';
import * as path from 'path';
import { VocabularyBridge, bridgeAgreement, buildBridge, buildOptBridge, loadBridge, readCaptions, saveBridge } from '../../paper/bridge';
import { captionerFamily } from '../../models/captioner';
import { loadOptTokenizer } from '../../tokenizers/opt';
import { readJsonFile } from '../../json';
import { loadBertTokenizer, loadClipTokenizer } from '../../tokenizers';
import { RoundtripError } from '../../errors';

interface BuildArgs {
  captions: string[];
  out: string;
  blipTokenizer: string;
  clipTokenizer: string;
  compare?: string;
}

const build: CommandModule<{}, BuildArgs> = {
  command: 'build',
  describe: 'Learn the captioner → CLIP BPE bridge from caption files (BLIP WordPiece, or BLIP-2 OPT BPE for a BLIP-2 folder)',
  builder: (y) =>
    y
      .option('captions', { type: 'string', array: true, demandOption: true, describe: 'caption files (Karpathy/COCO JSON or text lines)' })
      .option('out', { type: 'string', demandOption: true, describe: 'bridge JSON to write' })
      .option('blip-tokenizer', { type: 'string', demandOption: true, describe: 'captioner folder: BLIP (vocab.txt) or BLIP-2 OPT (config.json + vocab.json + merges.txt: the bridge indexes OPT ids, end → text_config.eos_token_id)' })
      .option('clip-tokenizer', { type: 'string', demandOption: true, describe: 'folder with CLIP\'s vocab.json + merges.txt (an SD folder or its tokenizer/)' })
      .option('compare', { type: 'string', describe: 'another bridge (e.g. the authors\' reindex_clip_to_blip.json) to report agreement with (default: none)' }) as any,
  handler: (argv) => {
    const blip2 = captionerFamily(argv.blipTokenizer) === 'blip2';
    const clip = loadClipTokenizer(argv.clipTokenizer);
    const perFile = argv.captions.map((f) => [f, readCaptions(f)] as const);
    const captions = perFile.flatMap(([, c]) => c).filter((c) => c.trim() !== '');
    if (captions.length === 0) {
      throw new RoundtripError(`bridge build: no captions in ${perFile.map(([f, c]) => `${f} (${c.length})`).join(', ')}; give caption files with at least one non-empty caption`);
    }
    let bridge: VocabularyBridge;
    let unkId: number;
    if (blip2) {
      const t = readJsonFile(path.join(argv.blipTokenizer, 'config.json'), { object: true }).text_config ?? {};
      const opt = loadOptTokenizer(argv.blipTokenizer);
      bridge = buildOptBridge(captions, opt, clip, { eosId: Number(t.eos_token_id ?? 2), vocabSize: Number(t.vocab_size ?? 50272) });
      unkId = opt.unkId;
    } else {
      const blip = loadBertTokenizer(argv.blipTokenizer);
      bridge = buildBridge(captions, blip, clip);
      unkId = blip.unkId;
    }
    saveBridge(argv.out, bridge);
    const s = bridge.stats!;
    process.stdout.write(
      `bridge written to ${argv.out}\n` +
        `captions ${s.captions}, exact mappings ${s.exactCaptions} (coverage ${(100 * s.coverage).toFixed(1)} %)\n` +
        `CLIP ids: ${s.fromAlignment} from alignment, ${s.fromString} by token text, ${s.unknown} → [UNK]\n`,
    );
    if (argv.compare) {
      const a = bridgeAgreement(bridge, loadBridge(argv.compare), unkId);
      process.stdout.write(`agreement with ${argv.compare}: ${(100 * a.all).toFixed(1)} % of all CLIP ids, ${(100 * a.bothMapped).toFixed(1)} % of the ${a.bothMappedCount} ids both map\n`);
    }
  },
};

export const command: CommandModule<{}, any> = {
  command: 'bridge <command>',
  describe: 'The BLIP → CLIP vocabulary bridge of the joint method',
  builder: (y) => y.command(build).demandCommand(1),
  handler: () => undefined,
};
