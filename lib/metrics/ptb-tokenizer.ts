/**
 * PTB tokenisation as the COCO caption evaluation runs it: Stanford CoreNLP 3.4.1
 * `PTBTokenizer -preserveLines -lowerCase` over one caption per line, then the cocoeval
 * punctuation list dropped.
 *
 * This is a longest-match lexer in the style of the JFlex specification `PTBLexer.flex`
 * (same rule order, same tie-breaking: the longest match wins, and among equally long
 * matches the earlier rule; a rule with trailing context `r1/r2` competes with the length
 * of `r1 r2` but consumes only `r1`). Only the rules that can fire on caption text are
 * ported (words, clitics, numbers, hyphenated "things", abbreviations, acronyms, URLs,
 * e-mail, quotes, brackets, dashes, ellipses, smileys, symbols); SGML handling is reduced
 * to single tags. Lower-casing happens after escaping, so `(` becomes `-lrb-`.
 *
 * The lexer sees all captions of one batch as one text joined by `\n`, exactly as cocoeval
 * writes them to one temporary file: a few rules look across the line break (e.g. `etc.`
 * at the end of a line followed by an upper-case letter also yields a separate `.`).
 */
import { invalid } from '../errors';

/** Tokens cocoeval drops after PTB tokenisation (`pycocoevalcap/tokenizer/ptbtokenizer.py`). */
export const COCO_PUNCTUATIONS: readonly string[] = [
  "''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?', '!', ',', ':', '-', '--', '...', ';',
];
const PUNCTUATION_SET = new Set(COCO_PUNCTUATIONS);

/** Makes the letters of a literal alternation caseless (JFlex `%caseless` does not reach into classes). */
function ci(literal: string): string {
  let out = '';
  for (let i = 0; i < literal.length; i++) {
    const ch = literal[i];
    if (ch === '\\') {
      // keep escapes such as \. untouched
      out += ch + literal[i + 1];
      i++;
      continue;
    }
    if (ch === '[') {
      // character classes stay case-sensitive, as in JFlex
      const end = literal.indexOf(']', i + 1);
      out += literal.slice(i, end + 1);
      i = end;
      continue;
    }
    const lower = ch.toLowerCase();
    const upper = ch.toUpperCase();
    out += lower !== upper ? `[${lower}${upper}]` : ch;
  }
  return out;
}

// ---- macros (see PTBLexer.flex) -------------------------------------------------------------
const SPACE = '[ \\t\\u00A0\\u2000-\\u200A\\u3000]';
const NEWLINE = '(?:\\r|\\r?\\n|\\u2028|\\u2029|\\u000B|\\u000C|\\u0085)';
const SPACENL = `(?:${SPACE}|${NEWLINE})`;
const SPACENLS = `${SPACENL}+`;
const SGML1 =
  '<(?:[!?][A-Za-z\\-][^>\\r\\n]*|[A-Za-z][A-Za-z0-9_:.\\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\\-]*|[A-Za-z][A-Za-z0-9_:.\\-]*[ ]*=[ ]*(?:\'[^\']*\'|"[^"]*"|[A-Za-z][A-Za-z0-9_:.\\-]*)))*[ ]*\\/?|\\/[A-Za-z][A-Za-z0-9_:.\\-]*)[ ]*>';
const SENTEND1 = `${SPACENL}(?:${SPACENL}|\\p{Lu}|${SGML1})`;
const DIGIT = '[\\p{Nd}\\u07C0-\\u07C9]';
const ALNUM = '[\\p{Alphabetic}\\p{Nd}]';
const ALPHA = '\\p{Alphabetic}';
const LETTER = '[\\p{L}\\p{M}\\u00AD]';
const DATE = `${DIGIT}{1,2}[\\-\\/]${DIGIT}{1,2}[\\-\\/]${DIGIT}{2,4}`;
const NUM = `(?:${DIGIT}*(?:[.,\\u066B\\u066C]${DIGIT}+)+|${DIGIT}+(?:[.:,\\u00AD\\u066B\\u066C\\u2009\\u202F]${DIGIT}+)*)`;
const NUMBER = `[\\-+]?${NUM}`;
const FRAC = `(?:${DIGIT}{1,4}[\\- \\u00A0])?${DIGIT}{1,4}(?:\\\\?\\/|\\u2044)${DIGIT}{1,4}`;
const FRAC2 = '[\\u00BC\\u00BD\\u00BE\\u2153-\\u215E]';
const DOLSIGN = '(?:[A-Z]*\\$|#)';
const DOLSIGN2 = '[\\u00A2\\u00A3\\u00A4\\u00A5\\u0080\\u20A0\\u20AA\\u20AC\\u20B9\\u060B\\u0E3F\\u20A4\\uFFE0\\uFFE1\\uFFE5\\uFFE6]';
const WORD = `${LETTER}(?:${LETTER}|${DIGIT})*(?:[.!?]${LETTER}(?:${LETTER}|${DIGIT})*)*`;
const FILENAME_EXT = ci('bat|bmp|bz2|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip|3gp|wm') + '[vaVA]?' ;
const FILENAME = `${ALNUM}+(?:[\\-._/]${ALNUM}+)*\\.(?:${FILENAME_EXT})`;
const APOS = "(?:['\\u0092\\u2019\\u00B4]|&apos;)";
const APOSETCETERA = `(?:${APOS}|[\`\\u0091\\u2018\\u201B])`;
const HYPHEN = '[\\-_\\u058A\\u2010\\u2011]';
/**
 * THING in four alternation orders: JS regexes take the first alternative that succeeds while
 * JFlex takes the longest match, so the lexer tries every order and keeps the longest.
 */
const THING_VARIANTS = [
  [`${ALNUM}+|${NUMBER}`, `${ALNUM}+|${NUM}`],
  [`${NUMBER}|${ALNUM}+`, `${NUM}|${ALNUM}+`],
  [`${ALNUM}+|${NUMBER}`, `${NUM}|${ALNUM}+`],
  [`${NUMBER}|${ALNUM}+`, `${ALNUM}+|${NUM}`],
].map(([first, rest]) => `(?:[dDoOlL]${APOSETCETERA}${ALNUM})?(?:${first})(?:${HYPHEN}(?:[dDoOlL]${APOSETCETERA}${ALNUM})?(?:${rest}))*`);
const SPAMP = ci('&amp;');
const THINGA = `[A-Z]+(?:(?:[+&]|${SPAMP})[A-Z]+)+`;
const THING3 = `${ALNUM}+(?:-${ALPHA}+){0,2}(?:\\\\?\\/${ALNUM}+(?:-${ALPHA}+){0,2}){1,2}`;
const REDAUX = `${APOS}(?:[msdMSD]|${ci('re|ve|ll')})`;
const SWORD = '[\\p{Alphabetic}\\u00AD]*[A-MO-Za-mo-z]\\u00AD*';
const SREDAUX = `${ci('n')}${APOSETCETERA}${ci('t')}`;
const APOWORD =
  `${APOS}${ci('n')}${APOS}?|[lLdDjJ]${APOS}|${ci('Dunkin')}${APOS}|${ci('somethin')}${APOS}|${ci('ol')}${APOS}|${APOS}${ci('em')}` +
  `|${ci('diff')}${APOSETCETERA}${ci('rent')}|[A-HJ-XZn]${APOSETCETERA}\\p{L}{2}\\p{L}*|${APOS}[2-9]0${ci('s')}|${APOS}${ci('till')}?` +
  `|\\p{L}\\p{L}*[aeiouyAEIOUY]${APOSETCETERA}[aeiouA-Z]\\p{L}*|${APOS}${ci('cause')}|${ci("cont'd")}\\.?|${ci("nor'easter")}` +
  `|${ci("c'mon")}|${ci("e'er")}|${ci("s'mores")}|${ci("ev'ry")}|${ci("li'l")}|${ci("nat'l")}|${ci('O')}${APOSETCETERA}${ci('o')}`;
const APOWORD2 = `${ci('y')}${APOS}`;
const FULLURL = `${ci('(?:ftp|svn|svn\\+ssh|http|https|mailto)')}:\\/\\/[^ \\t\\n\\f\\r"<>|(){}\\[\\]]+[^ \\t\\n\\f\\r"'<>|.!?(){},;:&\\[\\]\\-]`;
// The `,-_` inside the second class is a character range in the original (',' .. '_'); kept as is.
const LIKELYURL = `(?:(?:${ci('www')}\\.(?:[^ \\t\\n\\f\\r"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4})|(?:(?:[^ \\t\\n\\f\\r"\`'<>|.!?(){},-_$]+\\.)+${ci('(?:com|net|org|edu)')}))(?:\\/[^ \\t\\n\\f\\r"<>|()]+[^ \\t\\n\\f\\r"<>|.!?(){},\\-])?`;
const EMAIL = `(?:${ci('&lt;')}|<)?(?:${ci('mailto')}:)?[a-zA-Z0-9._%+\\-]+@[A-Za-z0-9][A-Za-z0-9.\\-]*[A-Za-z0-9](?:${ci('&gt;')}|>)?`;
const TWITTER = `[@\\uFF20][a-zA-Z_][a-zA-Z_0-9]*|[#\\uFF03]${LETTER}(?:${LETTER}|${DIGIT}|_)*(?:${LETTER}|${DIGIT})`;
const ABMONTH = 'Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec';
const ABDAYS = 'Mon|Tue|Tues|Wed|Thu|Thurs|Fri';
// Case-sensitive first letters in the original are written as [A] etc.; ci() leaves classes alone.
const ABSTATE_CI = 'Ala|Ariz|Calif|Colo|Conn|Ct|Dak|Fla|Ga|Ind|Kan|Kans|Ky|Md|Mich|Minn|Mo|Mont|Neb|Nev|Okla|Penn|Tenn|Va|Vt|Wis|Wisc|Wyo';
const ABSTATE_CS = `A${ci('z')}|A${ci('rk')}|D${ci('el')}|I${ci('ll')}|L${ci('a')}|M${ci('ass')}|M${ci('iss')}|O${ci('re')}|P${ci('a')}|T${ci('ex')}|W${ci('ash')}`;
const ABCOMP = `${ci('Inc|Co|Cos|Corp|Bancorp|Bhd|Assn|Univ|Intl|Sys|Ltd|Plc|Rt')}|${ci('p')}${ci('p')}?${ci('t')}[eyEY]${ci('s')}?`;
const ABNUM = 'tel|est|ext|sq';
const ABPTIT = 'Jr|Bros|Ed\\.D|Ph\\.D|Esq';
const ABBREV1 = `(?:${ci(ABMONTH)}|${ci(ABDAYS)}|${ci(ABSTATE_CI)}|${ABSTATE_CS}|${ABCOMP}|${ci(ABNUM)}|${ci(ABPTIT)}|${ci('etc|al|seq|Bldg')})\\.`;
const ACRO = `[A-Za-z](?:\\.[A-Za-z])*|${ci('(?:Canada|Sino|Korean|EU|Japan|non)-U\\.S|U\\.S\\.-(?:U\\.K|U\\.S\\.S\\.R)')}`;
const ABTITLE =
  `${ci('Mr|Mrs|Ms|Mx|Dr|Drs|Prof|Profs|Sen|Sens|Rep|Reps|Atty|Attys|Lt|Col|Gen|Messrs|Gov|Govs|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|St|Ste|Ave|Pres|Lieut|Rt|Hon|Brig|Cmdr|Comdr|Pfc|Spc|Supt|Supts|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc|Sr')}|M${ci('iss')}`;
const ABCOMP2 = ci('Invt|Elec|Natl|Mfg|Mtg|Dept|Blvd|Rd|Ave');
const ABBREV4 = `${ABTITLE}|${ci('vs')}|v|${ci('Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph')}|${ACRO}|${ABCOMP2}`;
const ABBREV2 = `(?:${ABBREV4})\\.`;
const ACRONYM = `(?:${ACRO})\\.`;
const ACRONYM_FOLLOWERS =
  ['About', 'According', 'Additionally', 'After', 'An', 'A', 'As', 'At', 'But', 'Did', 'During', 'Earlier', 'He', 'Her', 'Here', 'How', 'However', 'If', 'In', 'It', 'Last', 'Many', 'More', 'Mr.', 'Ms.', 'Now', 'Once', 'One', 'Other', 'Our', 'She', 'Since', 'So', 'Some', 'Such', 'That', 'The', 'Their', 'Then', 'There', 'These', 'They', 'This', 'We', 'When', 'While', 'What', 'Who', 'Why', 'Yet', 'You']
    .map((w) => w[0] + ci(w.slice(1).replace('.', '\\.')))
    .join('|');
const ABBREV3 = `${ci('(?:ca|fig|figs|prop|no|nos|sec|secs|sect|sects|art|arts|para|paras|bldg|pp|op|approx|rs)')}\\.|Pt\\.`;
const ABBREVSN = ci('So\\.|No\\.');
const PHONE = `(?:\\([0-9]{2,3}\\)[ \\u00A0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \\u00A0])?[0-9]{2,4}[\\- \\u00A0])[0-9]{3,4}[\\- \\u00A0]?[0-9]{3,5}|(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}`;
const LDOTS = '\\.\\.\\.+|[\\u0085\\u2026]';
const SPACEDLDOTS = '\\.[ \\u00A0](?:\\.[ \\u00A0])+\\.';
const INSENTP = '[,;:\\u3001]';
const QUOTES = `${APOS}|[\`\\u2018-\\u201F\\u0082\\u0084\\u0091-\\u0094\\u2039\\u203A\\u00AB\\u00BB]{1,2}`;
const DBLQUOT = `"|${ci('&quot;')}|[\`'\\u0091\\u0092\\u2018\\u2019]'`;
const TBSPEC = `-${ci('(?:RRB|LRB|RCB|LCB|RSB|LSB)')}-|${ci('C\\.D\\.s|pro-|anti-')}|${ci('S')}(?:&|${SPAMP})${ci('P-500')}|${ci('S')}(?:&|${SPAMP})${ci('Ls')}|${ci('Cap')}${APOS}${ci('n')}|${ci('c')}${APOS}${ci('est')}`;
const TBSPEC2 = `${APOS}[0-9][0-9]`;
const SMILEY = "[<>]?[:;=][\\-o\\*']?[\\(\\)DPdpO\\\\{@\\|\\[\\]]";
const MISCSYMBOL =
  '[+%&~\\^|\\\\\\u00A6\\u00A7\\u00A8\\u00A9\\u00AC\\u00AE\\u00AF\\u00B0-\\u00B3\\u00B4-\\u00BA\\u00D7\\u00F7\\u0387\\u05BE\\u05C0\\u05C3\\u05C6\\u05F3\\u05F4\\u0600-\\u0603\\u0606-\\u060A\\u060C\\u0614\\u061B\\u061E\\u066A\\u066D\\u0703-\\u070D\\u07F6\\u07F7\\u07F8\\u0964\\u0965\\u0E4F\\u1FBD\\u2016\\u2017\\u2020-\\u2025\\u2030-\\u2038\\u203B\\u203C\\u2043\\u203E-\\u2042\\u2044\\u207A-\\u207F\\u208A-\\u208E\\u2100-\\u214F\\u2190-\\u21FF\\u2200-\\u2BFF\\u3001-\\u3006\\u3008-\\u3020\\u30FB\\uFF01-\\uFF0F\\uFF1A-\\uFF20\\uFF3B-\\uFF40\\uFF5B-\\uFF65]';
const EMOJI = '[\\u{1F1E6}-\\u{1F1FF}]{2}|[\\u2194-\\u2199\\u25FB-\\u27BF\\u{1F000}-\\u{1F9FF}][\\uFE0E\\uFE0F\\u{1F3FB}-\\u{1F3FF}]?';

// ---- token normalisation ---------------------------------------------------------------------
const SINGLE_QUOTE = /&apos;|'/g;
const DOUBLE_QUOTE = /"|&quot;/gi;
const LEFT_SINGLE = /[\u0082\u008B\u0091\u2018\u201A\u201B\u2039]/g;
const RIGHT_SINGLE = /[\u0092\u009B\u00B4\u2019\u203A]/g;
const LEFT_DOUBLE = /[\u0084\u0093\u201C\u201E\u00AB]|[\u0091\u2018]'/g;
const RIGHT_DOUBLE = /[\u0094\u201D\u00BB]|[\u0092\u2019]'/g;

/** PTB3 default "latexQuotes": straight quotes become `` ` ``/`` `` `` or `'`/`''` by guessed side. */
function latexQuotes(text: string, probablyLeft: boolean): string {
  let s = text;
  if (probablyLeft) {
    s = s.replace(SINGLE_QUOTE, '`').replace(DOUBLE_QUOTE, '``');
  } else {
    s = s.replace(SINGLE_QUOTE, "'").replace(DOUBLE_QUOTE, "''");
  }
  return s.replace(LEFT_SINGLE, '`').replace(RIGHT_SINGLE, "'").replace(LEFT_DOUBLE, '``').replace(RIGHT_DOUBLE, "''");
}

function normalizeAmp(text: string): string {
  return text.replace(/&amp;/gi, '&');
}

const removeSoftHyphens = (text: string): string => (text.indexOf('\u00AD') < 0 ? text : text.replace(/\u00AD/g, ''));

// ---- rules ---------------------------------------------------------------------------------------
/** What a matched rule emits. `pushback`: characters of the match given back to the input. */
interface RuleResult {
  tokens: string[];
  consumed: number;
}
interface Rule {
  /**
   * Sticky regexes for the same JFlex rule (usually one): group 1 = the consumed text, optional
   * group 2 = trailing context (not consumed). The longest match among them counts.
   */
  regexes: RegExp[];
  action: (text: string) => RuleResult;
}

const one = (token: string, consumed: number): RuleResult => ({ tokens: [token], consumed });
const skip = (consumed: number): RuleResult => ({ tokens: [], consumed });

function rule(body: string | string[], action: (text: string) => RuleResult, trailing?: string): Rule {
  const bodies = Array.isArray(body) ? body : [body];
  const regexes = bodies.map((b) => new RegExp(trailing === undefined ? `(${b})` : `(${b})(?=(${trailing}))`, 'uy'));
  return { regexes, action };
}
const asIs = (t: string): RuleResult => one(t, t.length);
/** ABBREV1 before a sentence end: the word with its period, then the period again. */
const abbrevWithExtraPeriod = (t: string): RuleResult => ({ tokens: [t, '.'], consumed: t.length });
const ellipsis = (t: string): RuleResult => one('...', t.length);

function acronymRule(t: string): RuleResult {
  if (t.length === 2) return { tokens: [t.slice(0, 1), '.'], consumed: t.length };
  return { tokens: [t, '.'], consumed: t.length };
}

const RULES: Rule[] = [
  rule(`${ci('c')}[+][+]|${ci('(?:c|f)')}#`, asIs),
  rule(ci("cannot|'twas|dunno"), (t) => one(t.slice(0, t.length - 3), t.length - 3)),
  rule(`${APOS}${ci('tis')}|${ci('gonna|gotta|lemme|gimme|wanna|nno')}`, (t) => one(t.slice(0, t.length - 2), t.length - 2)),
  rule(SGML1, (t) => one(t.replace(/[ \r\n]/g, '\u00A0'), t.length)),
  rule(`&${ci('(?:MD|mdash|ndash)')};|[\\u0096\\u0097\\u2013\\u2014\\u2015]`, (t) => one('--', t.length)),
  rule(SPAMP, (t) => one(normalizeAmp(t), t.length)),
  rule(`&${ci('(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq)')};|&#[0-9]+;`, asIs),
  rule(WORD, (t) => one(removeSoftHyphens(t), t.length), REDAUX),
  rule(SWORD, (t) => one(removeSoftHyphens(t), t.length), SREDAUX),
  rule(WORD, (t) => one(removeSoftHyphens(t), t.length)),
  rule(APOWORD, (t) => one(latexQuotes(t, false), t.length)),
  rule(APOWORD2, asIs, '\\p{L}'),
  rule(FULLURL, asIs),
  rule(LIKELYURL, asIs),
  rule(EMAIL, asIs),
  rule(TWITTER, asIs),
  rule(REDAUX, (t) => one(latexQuotes(t, false), t.length), `[^${ALPHA}]`),
  rule(SREDAUX, (t) => one(latexQuotes(t, false), t.length), `[^${ALPHA}]`),
  rule(DATE, asIs),
  rule(NUMBER, (t) => one(removeSoftHyphens(t), t.length)),
  rule(FRAC, (t) => one(t.replace(/ /g, '\u00A0'), t.length)),
  rule(FRAC2, (t) => one(t.replace('\u00BC', '1/4').replace('\u00BD', '1/2').replace('\u00BE', '3/4').replace('\u2153', '1/3').replace('\u2154', '2/3'), t.length)),
  rule(TBSPEC, (t) => one(normalizeAmp(t), t.length)),
  rule(`${ci('(?:E|Yahoo|Jeopardy)')}!`, asIs),
  rule(THING3, asIs),
  rule(DOLSIGN, asIs),
  rule(DOLSIGN2, asIs),
  rule(ACRONYM, acronymRule, `${SPACENLS}(?:${ACRONYM_FOLLOWERS}|${SGML1})(?:${SPACENL}|[?!])`),
  rule(ABBREV3, asIs, `${SPACENL}?\\p{Nd}`),
  rule(ABBREVSN, asIs, `${SPACENL}+${ci('(?:Africa|Korea|Cal)')}`),
  rule(`${ci('(?:pt[eyEY]|co)')}\\.`, asIs, `${SPACE}${ci('(?:ltd|lim)')}`),
  rule(ABBREV1, abbrevWithExtraPeriod, SENTEND1),
  rule(ABBREV1, asIs, '[^][^]'),
  rule(ABBREV1, abbrevWithExtraPeriod),
  rule(ABBREV2, asIs),
  rule(ABBREV4, asIs, SPACE),
  rule(ACRO, asIs, SPACENL),
  rule(TBSPEC2, asIs, SPACENL),
  rule('°[CFcf]', asIs),
  rule(FILENAME, asIs, `${SPACENL}|[.?!,"'<]`),
  rule(`${WORD}\\.`, (t) => one(removeSoftHyphens(t), t.length), INSENTP),
  rule(PHONE, (t) => one(t.replace(/ /g, '\u00A0').replace(/\(/g, '-LRB-').replace(/\)/g, '-RRB-'), t.length)),
  rule(DBLQUOT, (t) => one(latexQuotes(t, true), t.length), `[${ALPHA}\\p{Nd}$]`),
  rule(DBLQUOT, (t) => one(latexQuotes(t, false), t.length)),
  rule('\\x7F', (t) => skip(t.length)),
  rule(`<|${ci('&lt;')}`, (t) => one('<', t.length)),
  rule(`>|${ci('&gt;')}`, (t) => one('>', t.length)),
  rule(SMILEY, (t) => one(t.replace(/\(/g, '-LRB-').replace(/\)/g, '-RRB-'), t.length), `[^${ALPHA}\\p{Nd}]`),
  rule(EMOJI, asIs),
  rule('\\{', (t) => one('-LCB-', t.length)),
  rule('\\}', (t) => one('-RCB-', t.length)),
  rule('\\[', (t) => one('-LSB-', t.length)),
  rule('\\]', (t) => one('-RSB-', t.length)),
  rule('\\(', (t) => one('-LRB-', t.length)),
  rule('\\)', (t) => one('-RRB-', t.length)),
  rule('-+', (t) => one(t.length >= 3 && t.length <= 4 ? '--' : t, t.length)),
  rule(LDOTS, ellipsis, `\\.${SPACENLS}\\p{L}`),
  rule(SPACEDLDOTS, ellipsis, `${SPACE}\\.${SPACENLS}\\p{L}`),
  rule(`${LDOTS}|${SPACEDLDOTS}`, ellipsis),
  rule('@+|#+|_+', asIs),
  rule('\\*+|(?:\\\\\\*){1,3}', asIs),
  rule(INSENTP, asIs),
  rule('[?!]+', asIs),
  rule('[.\\u00A1\\u00BF\\u037E\\u0589\\u061F\\u06D4\\u0700-\\u0702\\u07FA\\u3002]', asIs),
  rule('=+', asIs),
  rule('\\/', asIs),
  rule(THING_VARIANTS, (t) => one(latexQuotes(t, false), t.length)),
  rule(THINGA, (t) => one(normalizeAmp(t), t.length), `\\.${INSENTP}`),
  rule(THINGA, (t) => one(normalizeAmp(t), t.length)),
  rule(QUOTES, (t) => one(latexQuotes(t, true), t.length), `\\p{L}[^ \\t\\u00A0\\u2000-\\u200A\\u3000\\r\\n\\u2028\\u2029\\u000B\\u000C\\u0085]`),
  rule(QUOTES, (t) => one(latexQuotes(t, true), t.length), `[AaIiUu][ \\t\\u00A0\\u2000-\\u200A\\u3000\\r\\n\\u2028\\u2029\\u000B\\u000C\\u0085]`),
  rule(QUOTES, (t) => one(latexQuotes(t, false), t.length)),
  rule(REDAUX, (t) => one(latexQuotes(t, false), t.length)),
  rule(SREDAUX, (t) => one(latexQuotes(t, false), t.length)),
  rule('<<|>>', asIs),
  rule(MISCSYMBOL, asIs),
  rule('[\\u0086\\u0087\\u0089\\u0095\\u0098\\u0099]', asIs),
  rule(`\\0|${SPACE}+|[\\u200B\\u200E\\u200F\\uFEFF]`, (t) => skip(t.length)),
  rule('&nbsp;', (t) => skip(t.length)),
];
const NEWLINE_RULE = new RegExp(NEWLINE, 'uy');
const OTHER_LINE_BREAKS = /[\n\r\u000B\u000C\u0085\u2028\u2029]/g;

/**
 * Raw PTBTokenizer output (before punctuation removal), one token list per input line.
 * `text` is the whole file content; lines are separated by `\n`.
 */
function lexLines(text: string): string[][] {
  const lines: string[][] = [[]];
  let pos = 0;
  const length = text.length;
  while (pos < length) {
    NEWLINE_RULE.lastIndex = pos;
    const nl = NEWLINE_RULE.exec(text);
    if (nl) {
      // -preserveLines: a newline ends the output line (\r\n counts once)
      lines.push([]);
      pos += nl[0].length;
      continue;
    }
    let bestLength = -1;
    let bestRule: Rule | undefined;
    let bestText = '';
    for (const r of RULES) {
      for (const regex of r.regexes) {
        regex.lastIndex = pos;
        const m = regex.exec(text);
        if (!m) continue;
        const total = m[1].length + (m[2] === undefined ? 0 : m[2].length);
        // strictly longer only: among equally long matches the earlier rule wins
        if (total > bestLength && m[1].length > 0) {
          bestLength = total;
          bestRule = r;
          bestText = m[1];
        }
      }
    }
    if (!bestRule) {
      // "untokenizable" characters are deleted (PTBLexer default `firstDelete`)
      pos += text.codePointAt(pos)! > 0xffff ? 2 : 1;
      continue;
    }
    const result = bestRule.action(bestText);
    lines[lines.length - 1].push(...result.tokens);
    pos += result.consumed;
  }
  return lines;
}

function checkCaptions(name: string, captions: readonly string[]): void {
  if (!Array.isArray(captions)) throw invalid(name, 'an array of caption strings', captions);
  for (let i = 0; i < captions.length; i++) {
    if (typeof captions[i] !== 'string') throw invalid(`${name}[${i}]`, 'a string', captions[i]);
  }
}

/**
 * Raw `PTBTokenizer -preserveLines -lowerCase` output for a batch of captions (one per line,
 * newlines inside a caption replaced by spaces), as space-joined token strings.
 */
export function ptbTokenizeRaw(captions: readonly string[]): string[] {
  checkCaptions('captions', captions);
  if (captions.length === 0) return [];
  // cocoeval replaces only \n; the other line breaks the lexer knows (\r, U+2028, …) would split a
  // caption into two lines there and misalign every later caption, so they become spaces here
  const text = captions.map((c) => c.replace(OTHER_LINE_BREAKS, ' ')).join('\n');
  const lines = lexLines(text);
  if (lines.length !== captions.length) throw new Error(`PTB tokenizer: internal error, ${captions.length} captions gave ${lines.length} lines`);
  return lines.map((tokens) => tokens.map((t) => t.toLowerCase()).join(' '));
}

/** Drops cocoeval's punctuation tokens from one raw PTB output line. */
export function removeCocoPunctuation(rawLine: string): string {
  return rawLine
    .trimEnd()
    .split(' ')
    .filter((w) => !PUNCTUATION_SET.has(w))
    .join(' ');
}

/**
 * Tokenises captions exactly as `pycocoevalcap.tokenizer.PTBTokenizer.tokenize` does for one
 * batch: PTB tokenisation with lower-casing, then punctuation tokens removed.
 */
export function ptbTokenize(captions: readonly string[]): string[] {
  return ptbTokenizeRaw(captions).map(removeCocoPunctuation);
}

/**
 * Tokenises a map of id → captions as cocoeval does (all captions of all ids in one batch,
 * in map order), returning the same shape.
 */
export function ptbTokenizeMap<K>(captionsById: ReadonlyMap<K, readonly string[]>): Map<K, string[]> {
  const flat: string[] = [];
  for (const [id, list] of captionsById) {
    checkCaptions(`captions of ${String(id)}`, list);
    for (const c of list) flat.push(c);
  }
  const tokenized = ptbTokenize(flat);
  const out = new Map<K, string[]>();
  let k = 0;
  for (const [id, list] of captionsById) {
    out.set(id, tokenized.slice(k, k + list.length));
    k += list.length;
  }
  return out;
}
