// A local Healthie GraphQL endpoint for tests: Healthie's schema (../shared/healthie/
// schema.graphql) executed by `graphql` with resolvers over in-memory data, so every
// document Kiln sends is parsed, validated and coerced as the real API would. It checks
// the auth headers, records requests, and can inject TOO_MANY_REQUESTS (HTTP 200 with a
// GraphQL error), HTTP 429/5xx and slow answers.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { buildSchema, execute, parse, validate, type DocumentNode, type GraphQLSchema } from 'graphql';
import { SHARED_DATA } from './data.ts';
import { toFhirDateTime } from '../../mappings/healthie/index.ts';

export const HEALTHIE_DIR = path.join(SHARED_DATA, '..', 'healthie');
let schemaCache: GraphQLSchema | undefined;
export function healthieSchema(): GraphQLSchema {
  return schemaCache ??= buildSchema(fs.readFileSync(path.join(HEALTHIE_DIR, 'schema.graphql'), 'utf8'));
}
export const example = (file: string) => JSON.parse(fs.readFileSync(path.join(HEALTHIE_DIR, 'examples', file), 'utf8'));

type Obj = Record<string, any> & { id: string };
export type Failure = 'rate' | 429 | 500 | 502 | 503;

export interface RecordedRequest {
  headers: http.IncomingHttpHeaders;
  query: string;
  variables: Record<string, any>;
  operation?: string;
  errors?: string[];
}

const cursorOf = (id: string) => Buffer.from(JSON.stringify({ k: [id] })).toString('base64');
const pad = (n: number) => String(n).padStart(2, '0');
/** Healthie's baseline date-time format, in UTC. */
export function healthieTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}

/** A Map that counts its changes, so the sorted lists built from it are rebuilt only after one. */
class Versioned extends Map<string, Obj> {
  version = 0;
  override set(k: string, v: Obj): this { this.version++; return super.set(k, v); }
  override delete(k: string): boolean { this.version++; return super.delete(k); }
  override clear(): void { this.version++; super.clear(); }
}

/** Milliseconds of a Healthie date-time ("2025-01-14 07:31:12 -0600"). */
const healthieMs = (t: string | undefined): number => Date.parse(toFhirDateTime(t) ?? '') || 0;

export class FakeHealthie {
  users = new Versioned();
  appointments = new Versioned();
  entries = new Versioned();
  medications = new Versioned();
  /** Sorted lists (and each id's position) per kind and order, valid while the map's version is. */
  private sorted = new Map<string, { version: number; list: Obj[]; at: Map<string, number> }>();
  requests: RecordedRequest[] = [];
  /** Failures to answer with, one per request, before serving normally. */
  failures: Failure[] = [];
  /** Probability (0..1) that any request is answered with a random failure. */
  failureRate = 0;
  delayMs = 0;
  /** Logical clock for updated_at, one second per change, so ordering is exact. */
  clock = Date.parse('2025-06-01T00:00:00Z');
  private nextId = 900_000_000;
  private server?: http.Server;
  private documents = new Map<string, { doc?: DocumentNode; errors: string[] }>();
  url = '';

  constructor(readonly apiKey = 'test-key') {}

  tick(): string { this.clock += 1000; return healthieTime(this.clock); }
  newId(): string { return String(this.nextId++); }

  put(kind: 'users' | 'appointments' | 'entries' | 'medications', obj: Obj, touch = true): Obj {
    const stored: Obj = { ...obj, cursor: cursorOf(obj.id) };
    // Non-null list fields of the schema that the examples leave out.
    if (kind === 'appointments') {
      stored.providers ??= stored.provider ? [stored.provider] : [];
      stored.attendees ??= stored.user ? [stored.user] : [];
    }
    if (kind === 'medications') stored.mirrored ??= false;
    if (touch || !stored.updated_at) stored.updated_at = this.tick();
    stored.created_at ??= stored.updated_at;
    this[kind].set(obj.id, stored);
    return stored;
  }

  /** The shared examples: Jo Rivera with appointments, metric entries and medications. */
  seedExamples(): void {
    this.put('users', example('01_user_patient.json').data.user, false);
    this.put('appointments', example('02_appointment_video_zoom.json').data.appointment, false);
    this.put('appointments', example('03_appointment_in_person.json').data.appointment, false);
    for (const a of example('04_appointment_external.json').data.appointments) this.put('appointments', a, false);
    for (const e of example('06_metric_entries.json').data.entries) this.put('entries', e, false);
    for (const m of example('05_medications.json').data.medications) this.put('medications', m, false);
  }

  /** n synthetic patients, each with one appointment, two metric entries and one medication. */
  seedMany(n: number): void {
    for (let i = 0; i < n; i++) {
      const uid = String(2_000_000 + i);
      this.put('users', {
        id: uid, first_name: `Given${i}`, last_name: `Family${i}`, legal_name: null, dob: '1980-01-01', gender: i % 2 ? 'Male' : 'Female',
        email: `p${i}@example.com`, phone_number: '555-000-0000', active: true, record_identifier: `MRN-${i}`, timezone: 'America/Chicago',
        preferred_language: 'en', dietitian_id: '388120', location: null, locations: [],
      });
      this.put('appointments', {
        id: String(3_000_000 + i), date: '2025-01-14 10:00:00 -0600', end: '2025-01-14 10:30:00 -0600', length: 30, contact_type: 'Healthie Video Call',
        pm_status: 'Occurred', user_id: Number(uid), user: { id: uid }, attendees: [{ id: uid }], provider: { id: '388120', full_name: 'Dana Okafor, RD' },
        appointment_type: { id: '41877', name: 'Follow-up' }, is_blocker: false,
      });
      this.put('entries', { id: String(4_000_000 + 2 * i), type: 'MetricEntry', category: 'Weight', metric_stat: 150 + (i % 50), created_at: '2025-01-14 07:30:00 -0600', poster: { id: uid }, subentries: [] });
      this.put('entries', { id: String(4_000_001 + 2 * i), type: 'MetricEntry', category: 'Heart Rate', metric_stat: 60 + (i % 30), created_at: '2025-01-14 07:31:00 -0600', poster: { id: uid }, subentries: [] });
      this.put('medications', { id: String(5_000_000 + i), name: 'metformin 500 MG', active: true, code: '861007', dosage: '500 MG', frequency: 'daily',
        start_date: '2024-11-01', mirrored: false, user_id: uid });
    }
  }

  /** A kind's objects that `keep` admits, in `order` (newest change first, or by id), built once per change of the kind. */
  private list(kind: 'users' | 'appointments' | 'entries', name: string, keep: (o: Obj) => boolean, order: 'updated-desc' | 'id'): { list: Obj[]; at: Map<string, number> } {
    const map = this[kind];
    const key = `${kind}/${name}/${order}`;
    const cached = this.sorted.get(key);
    if (cached && cached.version === map.version) return cached;
    const rows = [...map.values()].filter(keep).map((o) => ({ o, ms: healthieMs(o.updated_at) }));
    rows.sort(order === 'id' ? (a, b) => Number(a.o.id) - Number(b.o.id) || a.o.id.localeCompare(b.o.id) : (a, b) => b.ms - a.ms || b.o.id.localeCompare(a.o.id));
    const list = rows.map((r) => r.o);
    const built = { version: map.version, list, at: new Map(list.map((o, i) => [o.id, i])) };
    this.sorted.set(key, built);
    return built;
  }

  private byPatient?: { version: number; lists: Map<string, Obj[]> };
  /** Medications per patient id, built once per change of the medications. */
  private medicationsOf(): Map<string, Obj[]> {
    if (this.byPatient?.version === this.medications.version) return this.byPatient.lists;
    const lists = new Map<string, Obj[]>();
    for (const m of this.medications.values()) {
      const k = String(m.user_id);
      const l = lists.get(k);
      if (l) l.push(m); else lists.set(k, [m]);
    }
    this.byPatient = { version: this.medications.version, lists };
    return lists;
  }

  /** A page after the cursor's object (its id is in the cursor); a cursor no longer in the list starts over, as findIndex did. */
  private page({ list, at }: { list: Obj[]; at: Map<string, number> }, args: Record<string, any>, max: number): Obj[] {
    let start = 0;
    if (args.after) {
      let id: string | undefined;
      try { id = JSON.parse(Buffer.from(String(args.after), 'base64').toString('utf8')).k?.[0]; } catch { /* not ours */ }
      const i = id === undefined ? -1 : at.get(String(id)) ?? -1;
      start = i + 1;
    }
    const size = Math.min(args.page_size ?? 10, max);
    return list.slice(start, start + size);
  }

  private root() {
    const touch = (kind: 'users' | 'appointments' | 'entries' | 'medications', id: string, patch: Record<string, any>) => {
      const cur = this[kind].get(String(id));
      if (!cur) return undefined;
      return this.put(kind, { ...cur, ...Object.fromEntries(Object.entries(patch).filter(([k, v]) => k !== 'id' && v !== undefined)) });
    };
    const payload = (key: string, obj: Obj | undefined, what: string) =>
      obj ? { [key]: obj, messages: [] } : { [key]: null, messages: [{ field: 'id', message: `${what} not found` }] };
    const user = (id: string) => id ? { id, full_name: this.users.get(id) ? `${this.users.get(id)!.first_name} ${this.users.get(id)!.last_name}` : null } : null;
    return {
      user: ({ id }: any) => this.users.get(String(id)) ?? null,
      users: (args: any) => {
        const status = args.active_status === 'active' || args.active_status === 'archived' ? args.active_status : 'all';
        const keep = (u: Obj) => status === 'active' ? !!u.active : status === 'archived' ? !u.active : true;
        return this.page(this.list('users', status, keep, args.order_by === 'UPDATED_AT_DESC' ? 'updated-desc' : 'id'), args, 100);
      },
      appointment: ({ id, include_deleted }: any) => {
        const a = this.appointments.get(String(id));
        return a && (!a.deleted_at || include_deleted) ? a : null;
      },
      appointments: (args: any) => this.page(this.list('appointments', 'live', (a) => !a.deleted_at, 'updated-desc'), args, 500),
      entry: ({ id }: any) => this.entries.get(String(id)) ?? null,
      entries: (args: any) => this.page(this.list('entries', `type:${args.type ?? ''}`, (e) => !args.type || e.type === args.type, 'updated-desc'), args, 500),
      medication: ({ id }: any) => this.medications.get(String(id)) ?? null,
      medications: ({ patient_id }: any) => this.medicationsOf().get(String(patient_id)) ?? [],
      createClient: ({ input }: any) => {
        if (!input?.first_name || !input?.last_name) return { user: null, messages: [{ field: 'first_name', message: "can't be blank" }] };
        return payload('user', this.put('users', { id: this.newId(), active: true, ...input, location: null, locations: [] }), 'user');
      },
      updateClient: ({ input }: any) => {
        const { location, locations, preferred_language_code, ...rest } = input ?? {};
        return payload('user', touch('users', input?.id, {
          ...rest, preferred_language: preferred_language_code,
          location: location ?? undefined, locations: locations ?? (location ? [location] : undefined),
        }), 'user');
      },
      createAppointment: ({ input }: any) => {
        if (!input?.contact_type) return { appointment: null, messages: [{ field: 'contact_type', message: "can't be blank" }] };
        const id = this.newId();
        return payload('appointment', this.put('appointments', {
          id, date: input.datetime, contact_type: input.contact_type, user_id: Number(input.user_id), user: user(input.user_id), attendees: [user(input.user_id)],
          provider: input.other_party_id ? { id: input.other_party_id } : null, other_party_id: input.other_party_id ? Number(input.other_party_id) : null,
          appointment_type: input.appointment_type_id ? { id: input.appointment_type_id } : null, location: input.location ?? null,
          external_videochat_url: input.external_videochat_url ?? null, pm_status: null,
        }), 'appointment');
      },
      updateAppointment: ({ input }: any) => payload('appointment', touch('appointments', input?.id, {
        date: input?.datetime, contact_type: input?.contact_type, pm_status: input?.pm_status, location: input?.location,
        actual_duration: input?.actual_duration, external_videochat_url: input?.external_videochat_url,
      }), 'appointment'),
      deleteAppointment: ({ input }: any) => payload('appointment', touch('appointments', input?.id, { deleted_at: healthieTime(this.clock) }), 'appointment'),
      createEntry: ({ input }: any) => payload('entry', this.put('entries', {
        id: this.newId(), type: input.type, category: input.category, metric_stat: input.metric_stat === undefined ? null : Number(input.metric_stat),
        created_at: input.created_at, description: input.description ?? null, poster: { id: input.user_id }, third_party_source: input.third_party_source ?? null,
        subentries: (input.subentries ?? []).map((s: any) => ({ id: this.newId(), category: s.category, metric_stat: Number(s.metric_stat) })),
      }), 'entry'),
      updateEntry: ({ input }: any) => payload('entry', touch('entries', input?.id, {
        category: input?.category, metric_stat: input?.metric_stat === undefined ? undefined : Number(input.metric_stat), description: input?.description,
      }), 'entry'),
      createMedication: ({ input }: any) => payload('medication', this.put('medications', { id: this.newId(), mirrored: false, ...input }), 'medication'),
      updateMedication: ({ input }: any) => payload('medication', touch('medications', input?.id, input ?? {}), 'medication'),
    };
  }

  /** Mutations received, in order, as [operation name, input variables]. */
  mutations(): { operation: string; input: any }[] {
    return this.requests.filter((r) => /^\s*mutation/.test(r.query)).map((r) => ({ operation: r.operation!, input: r.variables.input }));
  }

  private nextFailure(): Failure | undefined {
    if (this.failures.length) return this.failures.shift();
    if (this.failureRate > 0 && Math.random() < this.failureRate) {
      const kinds: Failure[] = ['rate', 'rate', 429, 500, 503];
      return kinds[Math.floor(Math.random() * kinds.length)];
    }
    return undefined;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse, body: string) {
    const send = (status: number, json: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(json));
    };
    if (req.method !== 'POST') return send(405, { errors: [{ message: 'POST only' }] });
    if (req.headers.authorization !== `Basic ${this.apiKey}` || req.headers.authorizationsource !== 'API') {
      return send(401, { errors: [{ message: 'Unauthorized' }] });
    }
    let parsed: { query?: string; variables?: Record<string, any>; operationName?: string };
    try { parsed = JSON.parse(body); } catch { return send(400, { errors: [{ message: 'Invalid JSON' }] }); }
    const rec: RecordedRequest = { headers: req.headers, query: parsed.query ?? '', variables: parsed.variables ?? {} };
    this.requests.push(rec);
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    const failure = this.nextFailure();
    if (failure === 'rate') return send(200, { errors: [{ message: 'Too many requests. Please try again later.', extensions: { code: 'TOO_MANY_REQUESTS' } }] });
    if (failure) return send(failure, { errors: [{ message: 'Injected failure' }] });
    let cached = this.documents.get(rec.query);
    if (!cached) {
      try {
        const doc = parse(rec.query);
        cached = { doc, errors: validate(healthieSchema(), doc).map((e) => e.message) };
      } catch (e) {
        cached = { errors: [(e as Error).message] };
      }
      this.documents.set(rec.query, cached);
    }
    const op = cached.doc?.definitions[0];
    rec.operation = op && 'name' in op ? op.name?.value : undefined;
    if (cached.errors.length) {
      rec.errors = cached.errors;
      return send(200, { errors: cached.errors.map((message) => ({ message })) });
    }
    const result = await execute({ schema: healthieSchema(), document: cached.doc!, rootValue: this.root(), variableValues: rec.variables });
    if (result.errors) rec.errors = result.errors.map((e) => e.message);
    send(200, result);
  }

  async start(): Promise<string> {
    healthieSchema();
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        this.handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((e) => {
          res.writeHead(500);
          res.end(JSON.stringify({ errors: [{ message: String(e) }] }));
        });
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/graphql`;
    return this.url;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => { this.server?.close(() => resolve()); this.server?.closeAllConnections(); });
  }
}
