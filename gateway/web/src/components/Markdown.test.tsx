import { render } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { Markdown } from './Markdown';

function html(text: string) {
  const { container } = render(<Markdown text={text} />);
  return container;
}

describe('Markdown rendering', () => {
  it('does not create <script> elements or event-handler attributes from message text', () => {
    (window as unknown as { __xss?: number }).__xss = undefined;
    const el = html(
      'Hi <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script>\n\n' +
        '<div onclick="window.__xss=3" onmouseover="x()">box</div>\n\n<iframe src="https://evil.example"></iframe>',
    );
    expect(el.querySelector('script')).toBeNull();
    expect(el.querySelector('img')).toBeNull();
    expect(el.querySelector('iframe')).toBeNull();
    expect(el.querySelectorAll('[onerror],[onclick],[onmouseover],[onload]')).toHaveLength(0);
    // Shown as inert literal text instead.
    expect(el.textContent).toContain('<script>window.__xss=2</script>');
    expect(el.textContent).toContain('onerror="window.__xss=1"');
    expect((window as unknown as { __xss?: number }).__xss).toBeUndefined();
  });

  it('strips javascript: URLs and opens links in a new tab with rel=noopener', () => {
    const el = html('[safe](https://example.com/a) [bad](javascript:alert(1)) <https://auto.example>');
    const links = [...el.querySelectorAll('a')];
    const safe = links.find((a) => a.textContent === 'safe')!;
    expect(safe.getAttribute('href')).toBe('https://example.com/a');
    expect(safe.getAttribute('target')).toBe('_blank');
    expect(safe.getAttribute('rel')).toContain('noopener');
    const bad = links.find((a) => a.textContent === 'bad');
    expect(bad?.getAttribute('href') ?? '').not.toMatch(/javascript:/i);
    expect(links.some((a) => a.getAttribute('href') === 'https://auto.example')).toBe(true);
  });

  it('does not load images from Markdown image syntax', () => {
    const el = html('![pixel](https://tracker.example/p.png)');
    expect(el.querySelector('img')).toBeNull();
    expect(el.querySelector('a')?.getAttribute('href')).toBe('https://tracker.example/p.png');
  });

  it('renders headings, lists, GFM tables and highlighted code blocks', () => {
    const el = html(
      [
        '# Title',
        '',
        '- one',
        '- two',
        '',
        '1. first',
        '',
        '| Variable | Purpose |',
        '| --- | --- |',
        '| `OPENAI_API_KEY` | your key |',
        '',
        '```rust',
        'fn main() {',
        '    println!("Hello");',
        '}',
        '```',
        '',
        '~~gone~~ and **bold**',
      ].join('\n'),
    );
    expect(el.querySelector('h1')?.textContent).toBe('Title');
    expect(el.querySelectorAll('ul > li')).toHaveLength(2);
    expect(el.querySelectorAll('ol > li')).toHaveLength(1);
    const table = el.querySelector('table')!;
    expect(table).not.toBeNull();
    expect([...table.querySelectorAll('th')].map((t) => t.textContent)).toEqual(['Variable', 'Purpose']);
    expect(table.querySelector('td code')?.textContent).toBe('OPENAI_API_KEY');
    const code = el.querySelector('pre > code')!;
    expect(code.className).toContain('language-rust');
    expect(code.className).toContain('hljs');
    expect(code.querySelector('.hljs-keyword')?.textContent).toBe('fn');
    expect(el.querySelector('del')?.textContent).toBe('gone');
    expect(el.querySelector('strong')?.textContent).toBe('bold');
  });

  it('does not let ids clobber page globals', () => {
    const el = html('<a id="root" name="confab">x</a>\n\n[^1]\n\n[^1]: note');
    expect(el.querySelector('#root')).toBeNull();
  });
});
