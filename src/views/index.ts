// SQL on FHIR v2 ViewDefinitions in memory: validation, the runner, and the view-walking helpers
// the PostgreSQL compiler (src/store/views) shares so the two agree on columns and constants.
export type { Row, ViewColumn, ViewConstant, ViewDefinition, ViewSelect, ViewWhere } from './types.ts';
export { validateView } from './validate.ts';
export { PreparedView, ViewError, prepareView, runView } from './run.ts';
export { CONSTANT_TYPES, constantValue, selectColumns, viewColumns } from './columns.ts';
export { KNOWN_FUNCTIONS, compilePath, parseReference } from './fhirpath.ts';
export { STARTER_DIR, starterViews } from './starter.ts';
export { csvRecord } from './csv.ts';
