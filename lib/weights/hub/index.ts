/**
 * Model weights from the Hugging Face hub (and plain URLs): pulling, listing what is local, and
 * resolving a model argument (folder or alias) for every model-loading command.
 */
export { MODEL_ALIASES, REPO_ID, aliasForRepo } from './aliases';
export type { HubAlias, ModelAlias, ModelUse, UrlAlias } from './aliases';
export { DEFAULT_ENDPOINT, defaultModelDir, hfHubCache, hubEndpoint, modelDirName, modelsHome, readToken } from './config';
export type { HubToken } from './config';
export { downloadFile, INCOMPLETE_SUFFIX } from './download';
export type { DownloadOptions, DownloadResult, DownloadSpec } from './download';
export { HubError } from './errors';
export type { HubErrorCode } from './errors';
export { HubHttp } from './http';
export { formatModelList, listLocalModels } from './local';
export type { LocalModel } from './local';
export { MANIFEST_NAME, readManifest } from './manifest';
export type { ManifestFile, PullManifest } from './manifest';
export { convertDownloadedWeights, pullModel, resolvePullTarget } from './pull';
export type { PullOptions, PullResult, PullTarget, SafetensorsConverter } from './pull';
export { resolveModel, resolveModelPath } from './resolve';
export type { ResolvedModel, ResolveOptions } from './resolve';
export { isWeightFile, selectRepoFiles } from './select';
export type { Selection, SelectOptions, TreeFile } from './select';
