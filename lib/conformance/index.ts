/** Conformance runners of every component, registered on import. */
export * from './registry';
import './blip-captioning';
