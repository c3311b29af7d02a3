import type { CommandModule } from 'yargs';
import { command as bench } from './bench';
import { command as bridge } from './bridge';
import { command as caption } from './caption';
import { command as conformance } from './conformance';
import { command as demo } from './demo';
import { command as evaluate } from './eval';
import { command as experiment } from './experiment';
import { command as finetune } from './finetune';
import { command as generate } from './generate';
import { command as info } from './info';
import { command as launch } from './launch';
import { command as pretrainWorld } from './pretrain-world';
import { command as report } from './report';
import { command as rerank } from './rerank';
import { command as score } from './score';
import { command as sweep } from './sweep';
import { command as validateScore } from './validate-score';
import { command as tokenize } from './tokenize';
import { command as weights } from './weights';

/** Every `roundtrip` subcommand, one module per command. */
export const commands: CommandModule<{}, any>[] = [demo, info, tokenize, caption, generate, rerank, score, validateScore, sweep, report, evaluate, finetune, experiment, bench, pretrainWorld, conformance, bridge, weights, launch];
