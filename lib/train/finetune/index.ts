/**
 * Joint finetuning of BLIP and Stable Diffusion with reconstruction regularisation (paper, Section 4):
 * the loss terms as a composable API, the objective (summed or the release's alternating schedule), the
 * training loop, its data pipeline, the benchmark and the report.
 */
export * from '../../paper/joint/losses';
export * from '../../paper/joint/objective';
export * from '../../paper/joint/joint-step';
export * from './data';
export * from './trainer';
export * from './report';
export * from './recipes';
export * from '../../paper/joint/blip2';
export { benchFinetune } from './bench';
export type { BenchOptions, BenchResult, BenchRow } from './bench';
