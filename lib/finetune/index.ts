/**
 * Joint finetuning of BLIP and Stable Diffusion with reconstruction regularisation (paper, Section 4):
 * the loss terms as a composable API, the objective (summed or the release's alternating schedule), the
 * training loop, its data pipeline, the benchmark and the report.
 */
export * from './losses';
export * from './objective';
export * from './joint-step';
export * from './data';
export * from './trainer';
export * from './report';
export * from './recipes';
export * from './blip2';
export { benchFinetune } from './bench';
export type { BenchOptions, BenchResult, BenchRow } from './bench';
