/**
 * Errors and argument checks. Every user-facing check goes through `expect*` so that messages
 * always say what was expected and what arrived.
 */
export class RoundtripError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RoundtripError';
  }
}

/** Short, readable description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? value.slice(0, 57) + '...' : value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return `${typeof value} ${String(value)}`;
  if (Array.isArray(value)) return `array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `${value.constructor.name} of length ${(value as unknown as { length: number }).length}`;
  if (typeof value === 'function') return 'function';
  return `object${value.constructor && value.constructor !== Object ? ' ' + value.constructor.name : ''}`;
}

/**
 * How a check names an option: the API's own name unless the caller maps it. The CLI passes its flags, so the
 * one check of `numReturnSequences` reports `--k`: each option is checked once, in the API, and named as typed.
 */
export type OptionNames = Readonly<Record<string, string>>;

export function optionName(names: OptionNames | undefined, key: string): string {
  return names?.[key] ?? key;
}

/** Builds the one message format: `name: expected X, got Y`. */
export function invalid(name: string, expected: string, actual: unknown): RoundtripError {
  return new RoundtripError(`${name}: expected ${expected}, got ${describe(actual)}`);
}

export function expectInteger(name: string, value: unknown, opts: { min?: number; max?: number } = {}): number {
  const { min = -Infinity, max = Infinity } = opts;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    const range = min !== -Infinity && max !== Infinity ? ` in [${min}, ${max}]` : min !== -Infinity ? ` >= ${min}` : max !== Infinity ? ` <= ${max}` : '';
    throw invalid(name, `an integer${range}`, value);
  }
  return value;
}

export function expectNumber(name: string, value: unknown, opts: { min?: number; max?: number; exclusiveMin?: boolean } = {}): number {
  const { min = -Infinity, max = Infinity, exclusiveMin = false } = opts;
  if (typeof value !== 'number' || !Number.isFinite(value) || (exclusiveMin ? value <= min : value < min) || value > max) {
    const lo = min === -Infinity ? '' : `${exclusiveMin ? '>' : '>='} ${min}`;
    const hi = max === Infinity ? '' : `<= ${max}`;
    throw invalid(name, `a finite number${lo || hi ? ' ' + [lo, hi].filter(Boolean).join(' and ') : ''}`, value);
  }
  return value;
}

export function expectString(name: string, value: unknown): string {
  if (typeof value !== 'string') throw invalid(name, 'a string', value);
  return value;
}

export function expectOneOf<T extends string>(name: string, value: unknown, choices: readonly T[]): T {
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
    throw invalid(name, `one of ${choices.map((c) => JSON.stringify(c)).join(', ')}`, value);
  }
  return value as T;
}

export function expectBoolean(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw invalid(name, 'a boolean', value);
  return value;
}
