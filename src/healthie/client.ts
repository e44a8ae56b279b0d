// Healthie GraphQL client: the documented headers (raw key after "Basic",
// AuthorizationSource: API, a pinned API version), cursor paging, retries with
// exponential backoff on TOO_MANY_REQUESTS (HTTP 200 + GraphQL error), 429 and 5xx,
// and mutation `messages[]` turned into errors. The API key is never logged: it is
// kept in a private field and appears in no error message.

export const DEFAULT_API_VERSION = '2024-06-01';

export interface HealthieClientOptions {
  url: string;
  apiKey: string;
  apiVersion?: string;
  maxRetries?: number;
  /** First backoff delay; doubles per attempt (with jitter), capped at maxDelayMs. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  timeoutMs?: number;
}

export class HealthieError extends Error {
  constructor(message: string, readonly code?: string, readonly retryable = false) { super(message); }
}

/** A mutation refused by Healthie's validation (payload `messages`). */
export class HealthieMutationError extends HealthieError {
  constructor(readonly mutation: string, readonly messages: { field?: string | null; message: string }[]) {
    super(`Healthie refused ${mutation}: ${messages.map((m) => (m.field ? `${m.field} ${m.message}` : m.message)).join('; ')}`, 'VALIDATION');
  }
}

export interface ClientStats { requests: number; retries: number }

export class HealthieClient {
  readonly #apiKey: string;
  readonly stats: ClientStats = { requests: 0, retries: 0 };
  constructor(private readonly opts: HealthieClientOptions) {
    if (!opts.apiKey) throw new HealthieError('No Healthie API key configured');
    this.#apiKey = opts.apiKey;
  }

  get url(): string { return this.opts.url; }

  toJSON() { return { url: this.opts.url, apiVersion: this.opts.apiVersion ?? DEFAULT_API_VERSION }; }

  /** One GraphQL request; retried on rate limits, 429, 5xx and network failures. */
  async request<T = any>(query: string, variables: Record<string, unknown> = {}): Promise<T> {
    const max = this.opts.maxRetries ?? 6;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once<T>(query, variables);
      } catch (e) {
        const err = e instanceof HealthieError ? e : new HealthieError(`Healthie request failed: ${(e as Error).message}`, 'NETWORK', true);
        if (!err.retryable || attempt >= max) throw err;
        this.stats.retries++;
        const base = this.opts.baseDelayMs ?? 500;
        const delay = Math.min(this.opts.maxDelayMs ?? 30_000, base * 2 ** attempt) * (0.75 + Math.random() * 0.5);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  private async once<T>(query: string, variables: Record<string, unknown>): Promise<T> {
    this.stats.requests++;
    const res = await fetch(this.opts.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json',
        authorization: `Basic ${this.#apiKey}`,
        authorizationsource: 'API',
        'healthie-graphql-api-version': this.opts.apiVersion ?? DEFAULT_API_VERSION,
      },
      body: JSON.stringify({ query, variables }),
      signal: AbortSignal.timeout(this.opts.timeoutMs ?? 30_000),
    });
    if (res.status === 429 || res.status >= 500) {
      await res.body?.cancel();
      throw new HealthieError(`Healthie answered HTTP ${res.status}`, `HTTP_${res.status}`, true);
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw new HealthieError(`Healthie refused the API key (HTTP ${res.status})`, 'UNAUTHORIZED');
    }
    let body: { data?: T; errors?: { message: string; extensions?: { code?: string } }[] };
    try {
      body = await res.json() as typeof body;
    } catch {
      throw new HealthieError(`Healthie answered HTTP ${res.status} without JSON`, `HTTP_${res.status}`, res.status >= 500);
    }
    if (body.errors?.length) {
      const rateLimited = body.errors.some((e) => e.extensions?.code === 'TOO_MANY_REQUESTS');
      throw new HealthieError(`Healthie GraphQL error: ${body.errors.map((e) => e.message).join('; ')}`,
        rateLimited ? 'TOO_MANY_REQUESTS' : body.errors[0].extensions?.code, rateLimited);
    }
    if (res.status >= 400) throw new HealthieError(`Healthie answered HTTP ${res.status}`, `HTTP_${res.status}`);
    return body.data as T;
  }

  /** A mutation whose payload has `messages`; returns the payload's object, throws on messages. */
  async mutate<T = any>(query: string, variables: Record<string, unknown>, field: string, object: string): Promise<T> {
    const data = await this.request<Record<string, any>>(query, variables);
    const payload = data?.[field];
    const messages = (payload?.messages ?? []) as { field?: string; message: string }[];
    if (messages.length) throw new HealthieMutationError(field, messages);
    if (!payload?.[object]) throw new HealthieMutationError(field, [{ message: `no ${object} returned` }]);
    return payload[object] as T;
  }

  /**
   * Pages a list query by cursor: `after` is the last item's cursor; a page shorter
   * than page_size ends it. `startAfter` resumes an interrupted walk.
   */
  async *pages<T extends { cursor?: string }>(query: string, field: string, pageSize: number,
    variables: Record<string, unknown> = {}, startAfter?: string): AsyncGenerator<T[]> {
    let after = startAfter ?? null;
    for (;;) {
      const data = await this.request<Record<string, T[] | null>>(query, { ...variables, after, page_size: pageSize });
      const page = data?.[field] ?? [];
      if (page.length) yield page;
      if (page.length < pageSize) return;
      const last = page[page.length - 1].cursor;
      if (!last) throw new HealthieError(`${field}: page without cursors (select the cursor field)`);
      after = last;
    }
  }
}
