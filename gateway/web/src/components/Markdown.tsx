// Renders a chat message as GitHub-flavoured Markdown, safely.
//
// - Raw HTML in a message is shown as literal text (never parsed into
//   elements), so `<script>` or `<img onerror=…>` cannot run.
// - rehype-sanitize (GitHub's schema) still runs over the generated HTML as
//   defence in depth: it strips javascript: URLs, event handlers and any
//   element outside the allow-list.
// - Code blocks are highlighted after sanitising (highlight classes only).
import { memo } from 'react';
import ReactMarkdown, { type Components } from 'react-markdown';
import rehypeHighlight from 'rehype-highlight';
import rehypeSanitize, { defaultSchema } from 'rehype-sanitize';
import remarkGfm from 'remark-gfm';

interface MdNode {
  type: string;
  value?: string;
  children?: MdNode[];
}

/** remark plugin: turn raw HTML nodes into plain text nodes. */
export function remarkHtmlAsText() {
  return (tree: MdNode) => {
    const walk = (node: MdNode) => {
      if (node.type === 'html') node.type = 'text';
      node.children?.forEach(walk);
    };
    walk(tree);
  };
}

const schema = {
  ...defaultSchema,
  // GitHub's schema prefixes ids/names with "user-content-"; keep that, and
  // keep language-* classes on code so the highlighter knows the language.
  attributes: {
    ...defaultSchema.attributes,
    code: [...(defaultSchema.attributes?.code ?? []), ['className', /^language-./]],
  },
};

const components: Components = {
  a({ node: _node, href, children, ...rest }) {
    return (
      <a {...rest} href={href} target="_blank" rel="noopener noreferrer nofollow">
        {children}
      </a>
    );
  },
  table({ node: _node, children, ...rest }) {
    return (
      <div className="md-table-wrap" tabIndex={0} role="region" aria-label="Table">
        <table {...rest}>{children}</table>
      </div>
    );
  },
  img({ src, alt }) {
    // Images from messages are not loaded (privacy / tracking); show a link instead.
    if (typeof src !== 'string' || !src) return <span>{alt ?? ''}</span>;
    return (
      <a href={src} target="_blank" rel="noopener noreferrer nofollow">
        {alt ? `🖼 ${alt}` : '🖼 image'}
      </a>
    );
  },
};

const remarkPlugins = [remarkGfm, remarkHtmlAsText];
const rehypePlugins = [
  [rehypeSanitize, schema],
  [rehypeHighlight, { detect: false }],
] as NonNullable<Parameters<typeof ReactMarkdown>[0]['rehypePlugins']>;

export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="md">
      <ReactMarkdown
        remarkPlugins={remarkPlugins}
        rehypePlugins={rehypePlugins}
        components={components}
      >
        {text}
      </ReactMarkdown>
    </div>
  );
});
