/** The small pages kiln itself serves to browsers (waiting, ended, busy), with secure headers in the markup's spirit: no scripts. */
const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export function pageHtml(title: string, text: string, refresh = false, refreshS = 1): string {
  return `<!doctype html><html lang="en"><meta charset="utf-8"><meta name="viewport" content="width=device-width">${
    refresh ? `<meta http-equiv="refresh" content="${refreshS}">` : ''
  }<title>${esc(title)}</title><body style="font:16px system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em"><h1>${esc(title)}</h1><p>${esc(text)}</p></body></html>`;
}
