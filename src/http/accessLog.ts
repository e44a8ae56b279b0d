// The access log: one line per HTTP request when its response ends, and the request id that
// ties that line to every other line about the request and to a 5xx's OperationOutcome.
// The path is logged without its query string and no header but X-Request-Id is read:
// a query, a token or a body can carry PHI.
import crypto from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import type { OperationOutcome } from '@medplum/fhirtypes';
import type { Logger } from 'pino';
import { log } from '../log.ts';
import { requestInfo } from './requestInfo.ts';

/** An incoming X-Request-Id is kept when short and plain (it is copied into log lines and a header); otherwise one is made. */
const SANE_ID = /^[A-Za-z0-9._:-]{1,200}$/;

/** Middleware, mounted first: names the request, echoes its id, and logs it once the response ends (or the client left). */
export function accessLog(req: Request, res: Response, next: NextFunction): void {
  const start = performance.now();
  const incoming = req.headers['x-request-id'];
  const info = requestInfo(res);
  const id = info.id = typeof incoming === 'string' && SANE_ID.test(incoming) ? incoming : crypto.randomUUID();
  res.setHeader('X-Request-Id', id);
  const path = req.path; // now: a mounted router strips its prefix from req.url while it handles the request
  res.once('close', () => {
    const status = res.statusCode;
    const line = {
      reqId: id, method: req.method, path, status, durationMs: Math.round((performance.now() - start) * 10) / 10,
      tenant: info.tenant, client: info.client, interaction: info.interaction, type: info.type,
      ...(res.writableFinished ? {} : { aborted: true }), // the client went away before the response was sent
    };
    // 503 is the server saying "not now" (database away, busy), which an operator watches but is no bug.
    if (status >= 500) log[status === 503 ? 'warn' : 'error'](line, 'request');
    else log.info(line, 'request');
  });
  next();
}

/** The request's logger: each line carries its request id (made at first use, as most requests log nothing else). */
export function requestLog(res: Response): Logger {
  const locals = res.locals as { kilnLog?: Logger };
  return (locals.kilnLog ??= log.child({ reqId: requestInfo(res).id }));
}

/** A 5xx's OperationOutcome names the request id, the key to the server's log lines about it; other outcomes go unchanged. */
export function withRequestId(res: Response, status: number, oo: OperationOutcome): OperationOutcome {
  const id = requestInfo(res).id;
  if (status < 500 || id === undefined) return oo;
  return { ...oo, issue: [...oo.issue, { severity: 'information', code: 'informational', diagnostics: `Request id ${id}: the server's log lines about this request carry it` }] };
}
