// Which client started an export (sql/012_audit.sql): its status URL and files are for
// that client only. Kept beside export_jobs so src/export stays unaware of tokens.
import type { Tx } from './resources.ts';

export async function recordExportOwner(tx: Tx, jobId: string, clientId: string): Promise<void> {
  await tx.query(`INSERT INTO export_job_owners (org_id, job_id, client_id) VALUES (current_setting('app.org_id')::integer, $1, $2)`, [jobId, clientId]);
}

export async function exportOwner(tx: Tx, jobId: string): Promise<string | undefined> {
  const { rows } = await tx.query(`SELECT client_id FROM export_job_owners WHERE org_id = current_setting('app.org_id')::integer AND job_id = $1`, [jobId]);
  return rows[0]?.client_id;
}
