import { describe, expect, it } from 'vitest';
import { initials, plainPreview } from './format';

describe('format helpers', () => {
  it('previews Markdown as one line of plain text', () => {
    expect(plainPreview('# Hello\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```js\nx()\n```\n**bold** [link](http://x)')).toBe(
      'Hello a b 1 2 [code] bold link',
    );
    expect(plainPreview('x'.repeat(200), 10)).toHaveLength(10);
  });
  it('makes initials', () => {
    expect(initials('alice-1')).toBe('A1');
    expect(initials('Launch plan')).toBe('LP');
    expect(initials('***')).toBe('?');
  });
});
