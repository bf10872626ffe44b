/**
 * Copy text to the clipboard: the async Clipboard API where the browser allows it, else a
 * hidden textarea and `execCommand('copy')`; when both are refused, the snippet's text is
 * selected so that Ctrl+C copies it.
 */

export type CopyResult = 'copied' | 'selected' | 'failed';

export async function copyText(text: string, element?: HTMLElement | null): Promise<CopyResult> {
  if (typeof navigator !== 'undefined' && navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return 'copied';
    } catch {
      // refused (no permission, document not focused): try the old way
    }
  }
  if (execCommandCopy(text)) {
    return 'copied';
  }
  if (element) {
    selectContents(element);
    return 'selected';
  }
  return 'failed';
}

function execCommandCopy(text: string): boolean {
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.style.position = 'fixed';
  area.style.top = '-1000px';
  area.style.opacity = '0';
  document.body.appendChild(area);
  const focused = document.activeElement as HTMLElement | null;
  try {
    area.select();
    return document.execCommand('copy');
  } catch {
    return false;
  } finally {
    area.remove();
    focused?.focus?.();
  }
}

function selectContents(element: HTMLElement): void {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection?.removeAllRanges();
  selection?.addRange(range);
}
