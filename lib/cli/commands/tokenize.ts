/** `roundtrip tokenize --tokenizer DIR [--json] TEXT...`: shows the ids and tokens of texts. */
import type { CommandModule } from 'yargs';
import { expectString, invalid } from '../../errors';
import { TOKENIZER_KINDS, loadTokenizer, Tokenizer, TokenizerKind } from '../../tokenizers';

/** One text's tokenization. */
export interface TokenizedText {
  text: string;
  /** Ids without special tokens. */
  ids: number[];
  /** Token strings, one per id. */
  tokens: string[];
  /** Ids with the model's start/end tokens. */
  idsWithSpecials: number[];
}

export interface TokenizeReport {
  kind: TokenizerKind;
  vocabSize: number;
  modelMaxLength: number;
  texts: TokenizedText[];
}

/** Tokenizes texts with an already loaded tokenizer. */
export function tokenizeWith(tokenizer: Tokenizer, texts: readonly string[]): TokenizeReport {
  if (!Array.isArray(texts)) throw invalid('texts', 'an array of strings', texts);
  return {
    kind: tokenizer.kind,
    vocabSize: tokenizer.vocabSize,
    modelMaxLength: tokenizer.modelMaxLength,
    texts: texts.map((t, i) => {
      const text = expectString(`texts[${i}]`, t);
      const ids = tokenizer.encode(text);
      return {
        text,
        ids,
        tokens: ids.map((id) => tokenizer.idToToken(id) ?? '?'),
        idsWithSpecials: tokenizer.encodeWithSpecials(text),
      };
    }),
  };
}

/** Loads the tokenizer of `dir` (BERT or CLIP, detected) and tokenizes the texts. */
export function tokenizeTexts(dir: string, texts: readonly string[], kind?: TokenizerKind): TokenizeReport {
  return tokenizeWith(loadTokenizer(dir, kind, { kind: '--kind' }), texts);
}

/** Plain-text rendering: a header, then per text its ids and tokens in aligned columns. */
export function formatTokenizeReport(report: TokenizeReport): string {
  const lines = [`${report.kind} tokenizer, vocabulary ${report.vocabSize}, max length ${report.modelMaxLength}`];
  for (const t of report.texts) {
    lines.push('', `text: ${JSON.stringify(t.text)}`, `ids (${t.ids.length}, ${t.idsWithSpecials.length} with specials): ${t.idsWithSpecials.join(' ')}`);
    t.ids.forEach((id, i) => lines.push(`  ${String(i).padStart(4)}  ${String(id).padStart(6)}  ${JSON.stringify(t.tokens[i])}`));
  }
  return lines.join('\n') + '\n';
}

export const command: CommandModule<{}, any> = {
  command: 'tokenize <texts..>',
  describe: 'Show the token ids and pieces of texts (BERT/BLIP, CLIP or OPT/BLIP-2 tokenizer)',
  builder: (y) =>
    y
      .positional('texts', { type: 'string', array: true, describe: 'Texts to tokenize' })
      .option('tokenizer', { type: 'string', demandOption: true, describe: 'Model or tokenizer folder (files at the top or under tokenizer/)' })
      .option('kind', { type: 'string', describe: `Tokenizer kind: ${TOKENIZER_KINDS.join(', ')} (default: detected from the files)` })
      .option('json', { type: 'boolean', default: false, describe: 'Print JSON instead of a table' }),
  handler: async (argv) => {
    const texts = (argv.texts as unknown[]).map((t) => String(t));
    const report = tokenizeTexts(expectString('--tokenizer', argv.tokenizer), texts, argv.kind as TokenizerKind | undefined);
    process.stdout.write(argv.json ? JSON.stringify(report, null, 2) + '\n' : formatTokenizeReport(report));
  },
};
