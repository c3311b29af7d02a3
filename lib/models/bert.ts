/**
 * Sentence embeddings with BERT (sentence-transformers/all-MiniLM-L6-v2: BertModel → mean pooling →
 * L2 normalisation) over the native "bert" model, and text-to-references distances.
 */
import { invalid } from '../errors';
import { NativeModel } from '../runtime/model';
import type { MethodOutputs } from '../runtime/native-methods';
import { Tensor } from '../runtime/tensor';
import { loadHfModel, meanCosineDistance, pick, readConfig, rows } from './clip';

export class BertModel {
  private constructor(
    readonly native: NativeModel<'bert'>,
    readonly config: any,
  ) {}

  /** Loads a transformers BERT folder (config.json + model.safetensors, bare BertModel names). */
  static async load(dir: string, opts: { device?: string } = {}): Promise<BertModel> {
    const config = readConfig(dir);
    return new BertModel(await loadHfModel('bert', dir, { device: opts.device, config }), config);
  }

  /** All outputs: last_hidden_state, pooler_output, cls, mean_pooled, sentence_embedding. */
  async encode(inputIds: Tensor, attentionMask?: Tensor, tokenTypeIds?: Tensor): Promise<MethodOutputs<'bert', 'encode'>> {
    return this.native.call('encode', { input_ids: inputIds, attention_mask: attentionMask, token_type_ids: tokenTypeIds });
  }

  /** The normalised sentence embedding [B, H] (sentence-transformers encode()). */
  async sentenceEmbedding(inputIds: Tensor, attentionMask?: Tensor): Promise<Tensor> {
    return pick(await this.encode(inputIds, attentionMask), 'sentence_embedding');
  }

  /**
   * Mean 1 − cos between the first row of `candidate` [1, H] and every row of `references` [R, H]
   * (e.g. a generated caption against the reference captions).
   */
  static distanceToReferences(candidate: Tensor, references: Tensor): number {
    const c = rows(candidate);
    if (c.length !== 1) throw invalid('candidate', 'one embedding ([H] or [1, H])', `shape [${candidate.shape.join(', ')}]`);
    return meanCosineDistance(c[0], rows(references));
  }

  dispose(): void {
    this.native.dispose();
  }
}
