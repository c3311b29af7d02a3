/**
 * Reranking with many candidates per item is not silent: an item still running after 2 s gets its own progress
 * line counting the candidate images made so far (lib/paper/rerank/run.ts processItems).
 */
import { processItems } from '../lib/paper/rerank/run';

test('an item running past 2 s shows its candidates as they are made', async () => {
  const quiet = process.env.ROUNDTRIP_QUIET;
  process.env.ROUNDTRIP_QUIET = '';
  const written: string[] = [];
  const spy = jest.spyOn(process.stderr, 'write').mockImplementation(((chunk: any) => {
    written.push(String(chunk));
    return true;
  }) as any);
  try {
    const appended: any[] = [];
    const run = { settings: { direction: 'i2t2i', k: 8 }, items: [{ index: 0 }, { index: 1 }], append: (r: any) => appended.push(r) } as any;
    const stats = { done: 0, skipped: 0 } as any;
    const cache = { calls: 0, generated: 0, hits: 0 };
    await processItems(run, stats, run.items, { progress: true }, cache, async (item) => {
      // Item 0 makes 8 candidate images over ~2.6 s; item 1 is quick.
      const n = item.index === 0 ? 8 : 1;
      for (let i = 0; i < n; i++) {
        await new Promise((r) => setTimeout(r, item.index === 0 ? 330 : 1));
        cache.generated++;
      }
      return { index: item.index } as any;
    });
    const text = written.join('');
    expect(text).toMatch(/item 0 candidates/);
    expect(text).not.toMatch(/item 1 candidates/);
    expect(appended.map((r) => r.index)).toEqual([0, 1]);
    expect(stats.done).toBe(2);
  } finally {
    spy.mockRestore();
    if (quiet === undefined) delete process.env.ROUNDTRIP_QUIET;
    else process.env.ROUNDTRIP_QUIET = quiet;
  }
});
