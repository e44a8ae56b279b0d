// Healthie User (client) <-> FHIR Patient. first_name is the preferred name (usual),
// legal_name the legal first name (official); locations become addresses with the
// primary one first (use home). See docs/healthie.md for the table.
import type { Address, ContactPoint, Extension, HumanName, Identifier, Patient } from '@medplum/fhirtypes';
import type { HealthieLocation, HealthieUser, ToFhirContext } from './types.ts';
import { compact, extValue, healthieMeta, identifierValue, stringExt, text } from './common.ts';
import { BCP47, EXT, SYSTEM, V2_0203 } from './systems.ts';

const GENDER_TO_FHIR: Record<string, Patient['gender']> = { male: 'male', female: 'female', other: 'other' };
const GENDER_TO_HEALTHIE: Record<string, string> = { male: 'Male', female: 'Female', other: 'Other' };

function toAddress(loc: HealthieLocation, primary: boolean): Address {
  const lines = [text(loc.line1), text(loc.line2)].filter((l): l is string => l !== undefined);
  return compact({
    id: text(loc.id),
    use: primary ? 'home' as const : undefined,
    line: lines,
    city: text(loc.city),
    state: text(loc.state),
    postalCode: text(loc.zip),
    country: text(loc.country),
  });
}

export function userToPatient(user: HealthieUser, ctx: ToFhirContext): Patient {
  const identifier: Identifier[] = [{ system: SYSTEM.user, value: user.id }];
  const mrn = text(user.record_identifier);
  if (mrn) identifier.push({ type: { coding: [{ system: V2_0203, code: 'MR' }] }, system: SYSTEM.recordIdentifier, value: mrn });
  const extra = text(user.additional_record_identifier);
  if (extra) identifier.push({ system: SYSTEM.additionalRecordIdentifier, value: extra });

  const family = text(user.last_name);
  const name: HumanName[] = [];
  const first = text(user.first_name);
  if (first || family) name.push(compact({ use: 'usual' as const, family, given: first ? [first] : undefined }));
  const legal = text(user.legal_name);
  if (legal) name.push(compact({ use: 'official' as const, family, given: [legal] }));

  const telecom: ContactPoint[] = [];
  const email = text(user.email);
  if (email && !user.skipped_email) telecom.push({ system: 'email', value: email });
  const phone = text(user.phone_number);
  if (phone) telecom.push({ system: 'phone', value: phone });

  const primaryId = text(user.location?.id);
  const address: Address[] = [];
  if (user.location) address.push(toAddress(user.location, true));
  for (const loc of user.locations ?? []) {
    if (primaryId !== undefined && text(loc.id) === primaryId) continue;
    address.push(toAddress(loc, false));
  }

  const gender = text(user.gender);
  const fhirGender = gender ? GENDER_TO_FHIR[gender.toLowerCase()] ?? 'other' : undefined;
  const extension: Extension[] = [
    ...stringExt(EXT.sex, text(user.sex)),
    // Free-text genders FHIR has no code for are kept verbatim so they go back unchanged.
    ...stringExt(EXT.gender, gender && !GENDER_TO_FHIR[gender.toLowerCase()] ? gender : undefined),
    ...stringExt(EXT.pronouns, text(user.pronouns)),
  ];
  const identity = text(user.gender_identity);
  if (identity) extension.push({ url: EXT.genderIdentity, valueCodeableConcept: { text: identity } });
  const tz = text(user.timezone);
  if (tz) extension.push({ url: EXT.timezone, valueCode: tz });

  const lang = text(user.preferred_language);
  const providerId = text(user.dietitian_id) ?? text(user.dietitian?.id);
  return compact({
    resourceType: 'Patient' as const,
    meta: healthieMeta(ctx.source),
    extension,
    identifier,
    active: user.active,
    name,
    telecom,
    gender: fhirGender,
    birthDate: text(user.dob),
    address,
    communication: lang ? [{ language: { coding: [{ system: BCP47, code: lang }] }, preferred: true }] : undefined,
    generalPractitioner: providerId
      ? [compact({ identifier: { system: SYSTEM.provider, value: providerId }, display: text(user.dietitian?.full_name) })]
      : undefined,
  });
}

/** Healthie's ClientLocationInput for an address. */
export interface ClientLocationInput {
  id?: string; line1?: string; line2?: string; city?: string; state?: string; zip?: string; country?: string;
}

function toLocationInput(a: Address): ClientLocationInput {
  return compact({ id: a.id, line1: a.line?.[0], line2: a.line?.[1], city: a.city, state: a.state, zip: a.postalCode, country: a.country });
}

/** Variables for createClient (first write) and updateClient (everything, incl. what create cannot take). */
export interface ClientInputs {
  create: Record<string, unknown>;
  update: Record<string, unknown>;
}

export function patientToClientInputs(p: Patient, healthieId?: string): ClientInputs {
  const usual = p.name?.find((n) => n.use === 'usual') ?? p.name?.find((n) => n.use !== 'official') ?? p.name?.[0];
  const official = p.name?.find((n) => n.use === 'official');
  const email = p.telecom?.find((t) => t.system === 'email')?.value;
  const phone = p.telecom?.find((t) => t.system === 'phone')?.value;
  const rawGender = extValue(p.extension, EXT.gender);
  const gender = rawGender ?? (p.gender ? GENDER_TO_HEALTHIE[p.gender] : undefined);
  // Only a home address is Healthie's primary location; others are just locations.
  const primary = p.address?.find((a) => a.use === 'home');
  const mrn = p.identifier?.find((i) => i.system === SYSTEM.recordIdentifier)
    ?? p.identifier?.find((i) => i.type?.coding?.some((c) => c.system === V2_0203 && c.code === 'MR'));
  const identity = p.extension?.find((e) => e.url === EXT.genderIdentity)?.valueCodeableConcept?.text;
  const common = compact({
    first_name: usual?.given?.[0] ?? official?.given?.[0],
    last_name: usual?.family ?? official?.family,
    legal_name: official?.given?.[0],
    email,
    skipped_email: email ? undefined : true,
    phone_number: phone,
    dob: p.birthDate,
    gender,
    dietitian_id: p.generalPractitioner?.find((g) => g.identifier?.system === SYSTEM.provider)?.identifier?.value,
    record_identifier: mrn?.value,
    additional_record_identifier: identifierValue(p.identifier, SYSTEM.additionalRecordIdentifier),
    timezone: p.extension?.find((e) => e.url === EXT.timezone)?.valueCode,
  });
  const update = compact({
    id: healthieId,
    ...common,
    active: p.active,
    sex: extValue(p.extension, EXT.sex),
    gender_identity: identity,
    pronouns: extValue(p.extension, EXT.pronouns),
    preferred_language_code: (p.communication?.find((c) => c.preferred) ?? p.communication?.[0])?.language?.coding?.find((c) => c.system === BCP47)?.code,
    location: primary ? toLocationInput(primary) : undefined,
    locations: p.address?.length ? p.address.map(toLocationInput) : undefined,
  });
  return { create: { ...common, dont_send_welcome: true }, update };
}
