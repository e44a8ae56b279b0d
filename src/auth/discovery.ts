// What the authorization server advertises: .well-known/smart-configuration (SMART App
// Launch 2.x), openid-configuration, and the CapabilityStatement security block. Pure.
import type { CapabilityStatementRestSecurity } from '@medplum/fhirtypes';
import { authUrl } from './urls.ts';
import { TOKEN_ALG } from './keys.ts';

/** Client assertion algorithms SMART Backend Services requires servers to accept. */
export const ASSERTION_ALGS = ['RS384', 'ES384'];

export const SCOPES_SUPPORTED = [
  'openid', 'fhirUser', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access',
  'patient/*.rs', 'patient/*.cruds', 'user/*.rs', 'user/*.cruds', 'system/*.rs', 'system/*.cruds',
  'patient/*.read', 'patient/*.write', 'user/*.read', 'user/*.write', 'system/*.read', 'system/*.write',
];

export const CAPABILITIES = [
  'launch-ehr', 'launch-standalone',
  'client-public', 'client-confidential-symmetric', 'client-confidential-asymmetric',
  'context-ehr-patient', 'context-standalone-patient',
  'permission-patient', 'permission-user', 'permission-offline', 'permission-online', 'permission-v1', 'permission-v2',
  'sso-openid-connect', 'authorize-post',
];

export function smartConfiguration(base: string) {
  return {
    issuer: base,
    jwks_uri: authUrl(base, 'jwks'),
    authorization_endpoint: authUrl(base, 'authorize'),
    token_endpoint: authUrl(base, 'token'),
    introspection_endpoint: authUrl(base, 'introspect'),
    revocation_endpoint: authUrl(base, 'revoke'),
    grant_types_supported: ['authorization_code', 'client_credentials', 'refresh_token'],
    token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic'],
    token_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGS,
    code_challenge_methods_supported: ['S256'],
    response_types_supported: ['code'],
    scopes_supported: SCOPES_SUPPORTED,
    capabilities: CAPABILITIES,
  };
}

export function openidConfiguration(base: string) {
  return {
    issuer: base,
    jwks_uri: authUrl(base, 'jwks'),
    authorization_endpoint: authUrl(base, 'authorize'),
    token_endpoint: authUrl(base, 'token'),
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: [TOKEN_ALG],
    scopes_supported: ['openid', 'fhirUser'],
    claims_supported: ['iss', 'sub', 'aud', 'exp', 'iat', 'auth_time', 'nonce', 'fhirUser'],
    grant_types_supported: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic', 'none'],
    code_challenge_methods_supported: ['S256'],
  };
}

/** CapabilityStatement.rest.security for a tenant base (SMART oauth-uris extension). */
export function smartSecurityExtension(base: string): CapabilityStatementRestSecurity {
  return {
    extension: [{
      url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
      extension: [
        { url: 'token', valueUri: authUrl(base, 'token') },
        { url: 'authorize', valueUri: authUrl(base, 'authorize') },
        { url: 'introspect', valueUri: authUrl(base, 'introspect') },
        { url: 'revoke', valueUri: authUrl(base, 'revoke') },
      ],
    }],
    service: [{
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR', display: 'SMART-on-FHIR' }],
      text: 'OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)',
    }],
    description: `SMART App Launch 2.x and Backend Services; discovery at ${base}/.well-known/smart-configuration`,
  };
}
