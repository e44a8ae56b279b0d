// The write-behind audit queue of versions before sql/021: reads appended their
// AuditEvent's facts to audit_log_queue and a background job stored them later. Reads
// now store the AuditEvent itself; what an older server left queued is stored once, at
// start, in the transaction that removes it from the queue (nothing lost, nothing twice).
import type pg from 'pg';
import type { AuditEvent } from '@medplum/fhirtypes';
import { auditRow, insertAuditEvents } from './auditWrite.ts';
import { transactionInstant } from './resources.ts';
import { auditEvent, type AuditAgent, type AuditFacts } from '../audit/event.ts';

const BATCH = 500;

/** The later queue format: the facts the AuditEvent is made of. */
interface QueuedAudit {
  id: string;
  recorded: string;
  base: string;
  facts: AuditFacts;
  agent: AuditAgent;
}

/** Stores every queued event (owner pool: maintenance); returns how many. */
export async function drainAuditQueue(owner: pg.Pool): Promise<number> {
  let total = 0;
  for (;;) {
    const client = await owner.connect();
    try {
      await client.query('BEGIN');
      const { rows } = await client.query(
        `DELETE FROM audit_log_queue WHERE (org_id, seq) IN (
           SELECT org_id, seq FROM audit_log_queue ORDER BY org_id, seq LIMIT $1 FOR UPDATE)
         RETURNING org_id, event::text AS event`, [BATCH]);
      const byOrg = new Map<number, AuditEvent[]>();
      for (const r of rows) {
        // The first queue format held the whole AuditEvent, the later one its facts.
        const q = JSON.parse(r.event as string) as QueuedAudit | AuditEvent;
        const e = 'resourceType' in q ? q : { ...auditEvent(q.facts, q.agent, q.base, q.recorded), id: q.id };
        byOrg.set(r.org_id, [...(byOrg.get(r.org_id) ?? []), e]);
      }
      // lastUpdated is taken in this transaction, not the queued recorded time: an
      // export's transaction time handed out before now must not lie above events that
      // commit only now, or they would be in no incremental export.
      const { now } = await transactionInstant(client);
      for (const [org, events] of byOrg) await insertAuditEvents(client, org, events.map((e) => auditRow(e, now, { id: e.id })));
      await client.query('COMMIT');
      total += rows.length;
      if (rows.length < BATCH) return total;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => {});
      throw e;
    } finally {
      client.release();
    }
  }
}
