// A minimal browser for the login/consent pages: keeps cookies and does not follow
// redirects (the tests read them).
export class Browser {
  cookies = new Map<string, string>();
  async request(method: string, url: string, form?: Record<string, string | string[]>) {
    const body = form ? new URLSearchParams(Object.entries(form).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((x) => [k, x]))) : undefined;
    const res = await fetch(url, {
      method, redirect: 'manual', body,
      headers: { ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}), cookie: [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const eq = pair.indexOf('=');
      this.cookies.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    const html = await res.text();
    return { status: res.status, headers: res.headers, location: res.headers.get('location') ?? undefined, html, request: /name="request" value="([^"]+)"/.exec(html)?.[1] };
  }
}
