import { RoundtripError } from '../../errors';

/**
 * What went wrong while talking to the hub, so that callers (and tests) can react without parsing
 * messages: `offline` (no connection), `auth` (gated/private, 401/403), `not-found` (repo, revision
 * or file missing), `corrupt` (bytes did not verify), `interrupted` (connection dropped; resumable),
 * `http` (other HTTP failure), `missing` (a model that is not present locally).
 */
export type HubErrorCode = 'offline' | 'auth' | 'not-found' | 'corrupt' | 'interrupted' | 'http' | 'missing';

/** A user-facing failure of a hub/model operation; the message says what to do next. */
export class HubError extends RoundtripError {
  constructor(
    message: string,
    readonly code: HubErrorCode,
  ) {
    super(message);
    this.name = 'HubError';
  }
}
